#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS each,
# default 10; 12 targets: about 2-3 minutes with the build cached) starting
# from its committed seed corpus in fuzz/corpus/<target>/. A crash, a
# panic, a failed assertion or a leak fails the script (and CI); the input
# that caused it is kept in fuzz/artifacts/<target>/ to reproduce with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
# New inputs found go to a scratch folder, never into the committed corpus.
# Installs cargo-fuzz into ~/.cargo/bin the first time (kept between runs).
# The sanitizer build (every dependency, librdkafka and SQLite included)
# takes a long time cold, so it lives outside the checkout and is reused
# between runs on one machine: FUZZ_TARGET_DIR, default
# ~/.cache/webhook-pipeline/fuzz-target.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${FUZZ_SECONDS:-10}"
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/webhook-pipeline/fuzz-target}"
mkdir -p "$target_dir"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install, first time only)..." >&2
  cargo install --locked cargo-fuzz
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi

cd "$root/fuzz"
cargo +nightly fuzz build --target-dir "$target_dir"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$target" "corpus/$target"
  echo "fuzzing $target for ${seconds}s" >&2
  if ! cargo +nightly fuzz run --target-dir "$target_dir" "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log" >&2
    failed+=("$target")
  else
    grep -E 'stat::number_of_executed_units' "$scratch/$target.log" | sed "s/^/$target: /" >&2 || true
  fi
done
if ((${#failed[@]})); then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzzing: every target ran ${seconds}s without a crash" >&2
