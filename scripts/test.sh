#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh build gains nothing from incremental state, and it costs gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/setup.sh

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the protocol core builds without tokio"
cargo check -p mesh --no-default-features --locked

# The fuzz targets live outside the workspace (they need cargo-fuzz to run); building them
# here keeps them in step with the code they fuzz.
step "fuzz targets build"
for crate in mesh crdt-store node; do
  # Start from the workspace's versions, so the targets build against what the tests test.
  [ -f "$crate/fuzz/Cargo.lock" ] || cp Cargo.lock "$crate/fuzz/Cargo.lock"
  cargo check --manifest-path "$crate/fuzz/Cargo.toml" --quiet
done

step "building binaries"
cargo build --workspace --bins --locked

step "doc tests"
cargo test --workspace --doc --locked

# Last, so that the suite's summary line closes the output.
step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
