#!/usr/bin/env bash
# Every test of the project: cfn-lint of template.yaml, then unit tests,
# end-to-end tests on the embedded store, the crash/restart test, the
# network guard, and the AWS adapters, handlers and end-to-end path on a
# moto server started here on 127.0.0.1.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"
# shellcheck source=scripts/dev-tools.sh
source scripts/dev-tools.sh

echo "== cfn-lint template.yaml"
cfn-lint template.yaml
start_moto
echo "== cargo test --workspace"
cargo test --workspace --locked --features imgproc-shared/stream-poller "$@"

# API conformance fuzzing: schemathesis against shared/openapi.json and a
# running imgproc-local serve, in a network namespace of its own (~30 s).
echo "== scripts/api-conformance.sh"
scripts/api-conformance.sh
