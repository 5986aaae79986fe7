#!/usr/bin/env bash
# Runs every test of the project: unit, end-to-end on the embedded store,
# crash/restart, and the network guard.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"
cargo test --workspace --locked "$@"
