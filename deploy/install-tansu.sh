#!/usr/bin/env bash
# Installs the tansu broker (DESIGN.md: tansu 0.6 with sqlite storage) into
# ~/.cargo/bin unless that exact version is already there. Building it takes
# about ten minutes on two cores; CI machines keep ~/.cargo/bin between runs.
set -euo pipefail
want="0.6.0"
export PATH="$HOME/.cargo/bin:$PATH"
if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$want"; then
  exit 0
fi
echo "installing tansu $want (cargo install, first time only)..." >&2
cargo install --locked tansu --version "$want" --features libsql
