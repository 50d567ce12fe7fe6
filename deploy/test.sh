#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# checks formatting and lints, builds the binaries the end-to-end tests
# start, and runs every test with cargo-nextest. Among them,
# tests/tests/e2e/monitoring.rs runs promtool (check config, check rules, test
# rules) on deploy/prometheus and checks the Grafana dashboard, and
# tests/tests/e2e/metrics.rs scrapes both binaries after real traffic.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

"$root/deploy/install-tansu.sh"
"$root/deploy/install-debian-packages.sh"
# hadolint and kubectl for tests/tests/e2e/deploy.rs (deploy/Dockerfile, deploy/k8s).
"$root/deploy/install-tools.sh"
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# Every crate of the lock file, for every platform: tests/tests/e2e/deploy.rs
# reads `cargo metadata --offline`, which needs the ones a Linux build never
# downloads (Windows' among them) on a fresh machine too.
cargo fetch --locked
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
# Bounded fuzzing of every parser of sender-controlled bytes (fuzz/).
"$root/deploy/fuzz.sh"
