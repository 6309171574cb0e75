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

if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}"
  else
    echo "missing Debian packages: ${apt_packages[*]} (run as root to install them)" >&2
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found: tests will run with cargo test" >&2
fi
