#!/usr/bin/env bash
# Installs what Rhizome's tests and tools need beyond the Rust toolchain, from the package
# registries only. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
# setpriv runs a test process as an unprivileged user (root ignores file permissions).
command -v setpriv >/dev/null 2>&1 || apt_packages+=(util-linux)
# ip netns, veth and bridges for the multi-host tests.
command -v ip >/dev/null 2>&1 || apt_packages+=(iproute2)
# nft drops frames at random on a cable of the network-namespace tests (a lossy link).
command -v nft >/dev/null 2>&1 || apt_packages+=(nftables)
# promtool parses every node's /metrics; a Prometheus server scrapes one in the metrics test.
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
# systemd-analyze verifies the service unit under packaging/.
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)
# A private PostgreSQL cluster for the export tests and bench/export.sh (its server binaries live
# under /usr/lib/postgresql/<version>/bin, not on PATH).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_packages+=(postgresql)
# Headless Chromium renders the web view in its test, driven over the DevTools protocol.
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)

if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
  else
    echo "missing Debian packages: ${apt_packages[*]} (run as root to install them)" >&2
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found: tests will run with cargo test" >&2
fi

# ONNX Runtime for the `onnx` agent. ort loads it at run time (the build downloads nothing), and
# PyPI is the one place it can come from: the wheel carries the shared library.
ort_version=1.32.0
ort_dir=.cache/onnxruntime
ort_lib="$ort_dir/libonnxruntime.so.$ort_version"
if [ ! -f "$ort_lib" ]; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    echo "python3 with pip is needed to fetch ONNX Runtime $ort_version; the onnx agent's tests will fail without it" >&2
  else
    mkdir -p "$ort_dir"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      "onnxruntime==$ort_version" -d "$tmp"
    # A wheel is a zip; python3 unpacks it where unzip may be missing.
    python3 - "$tmp" "$ort_lib" <<'PY'
import glob, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/onnxruntime-*.whl")[0]
name = "onnxruntime/capi/" + dest.rsplit("/", 1)[1]
with zipfile.ZipFile(wheel) as z, z.open(name) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
shutil.move(dest + ".part", dest)
PY
    rm -rf "$tmp"
    trap - EXIT
  fi
fi
# The unversioned name is what ORT_DYLIB_PATH examples and the agent's lookup expect.
if [ -f "$ort_lib" ]; then
  ln -sf "libonnxruntime.so.$ort_version" "$ort_dir/libonnxruntime.so"
fi

# automerge-repo clients (Node.js) for the tests of GET /automerge, at the versions the lock
# file pins. `npm install --no-save` installs what the lock says and leaves it as it is (`npm ci`
# refuses this lock: npm leaves cbor-extract's optional per-platform packages out of it).
if command -v npm >/dev/null 2>&1; then
  if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
    (cd tests/js && npm install --no-save --no-audit --no-fund --loglevel=error)
    touch tests/js/node_modules
  fi
else
  echo "npm not found: the automerge-repo client tests will fail" >&2
fi
