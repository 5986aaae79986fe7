#!/usr/bin/env bash
# The Lambda emulator's tests and the black-box suite:
#   infra/tests     the moto patches (same behaviour as released moto, linear
#                   cost) and the emulator itself, with a stub function;
#   infra/blackbox  the real function binaries as template.yaml wires them,
#                   driven only through the HTTP API, S3 and SQS.
# Each suite starts its own moto server (on $MOTO_PORT when set, else a free
# port) and emulator. Cases that need functions or routes the template does
# not have yet are reported as xfail with the reason.
#
#   scripts/test-lambda.sh                     # both suites
#   scripts/test-lambda.sh infra/blackbox -k killed
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"
# shellcheck source=scripts/dev-tools.sh
source scripts/dev-tools.sh

# Each function binary is the package of the same name (functions/*).
mapfile -t bins < <(python3 infra/lambda_emulator.py --list-binaries --template template.yaml)
echo "== cargo build: ${bins[*]}"
build=(cargo build --locked)
for b in "${bins[@]}"; do build+=(-p "$b"); done
# scripts/test.sh builds every binary once, with the test suite's
# features, and says so with IMGPROC_PREBUILT=1.
[[ "${IMGPROC_PREBUILT:-}" == 1 ]] || "${build[@]}"

export BLACKBOX_BIN_DIR="$CARGO_TARGET_DIR/debug"
(($# > 0)) || set -- infra/tests infra/blackbox
echo "== pytest $*"
python3 -m pytest -p no:cacheprovider -rxXs "$@"
