#!/usr/bin/env bash
# Every test of the project: rustfmt, clippy, cfn-lint and the template's checks, then unit tests,
# end-to-end tests on the embedded store, the crash/restart test, the
# network guard, and the AWS adapters, handlers and end-to-end path on a
# moto server started here on 127.0.0.1; then the web page in a browser,
# schemathesis against the API, and a short cargo fuzz run of the CSV
# parser and the format sniffer.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"
# shellcheck source=scripts/dev-tools.sh
source scripts/dev-tools.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --features imgproc-shared/stream-poller -- -D warnings
echo "== cfn-lint template.yaml"
cfn-lint template.yaml
# Least privilege, auth on by default, spending caps and retention, read
# from the template (and each check shown to fail on a faulty copy).
echo "== pytest infra/tests/test_template.py"
python3 -m pytest -p no:cacheprovider -q -rs infra/tests/test_template.py
# The cost model (COST.md) must still read the benchmark's figures and the template.
echo "== scripts/cost_model.py"
python3 scripts/cost_model.py > /dev/null
python3 scripts/cost_model.py --check-doc
start_moto
echo "== cargo test --workspace"
cargo test --workspace --locked --features imgproc-shared/stream-poller "$@"
# The web page in headless Chromium (skipped with a reason outside CI when
# Chromium is missing; a failure in CI). An unfiltered `cargo test` above
# has just built imgproc-local; with filters the script builds it itself.
if (($# == 0)); then
  IMGPROC_LOCAL_BIN="$CARGO_TARGET_DIR/debug/imgproc-local" scripts/test-browser.sh
else
  scripts/test-browser.sh
fi

# The Lambda binaries as template.yaml wires them, each suite on a moto
# server of its own: the emulator's tests and the black-box suite
# (infra/blackbox), then one 5,000-image request end to end (the
# 50,000-image run is `E2E_IMAGES=50000 scripts/e2e-lambda.sh`). One build
# of every binary with the test suite's features (`--tests` unifies the
# dev-dependencies' features as `cargo test` does), so nothing is rebuilt.
if (($# == 0)); then
  echo "== Lambda binaries on moto"
  cargo build --locked --workspace --bins --tests --features imgproc-shared/stream-poller
  # Not the moto server above: each suite starts its own, on a free port.
  own_moto=(env -u MOTO_PORT -u MOTO_STATE_DIR -u AWS_ENDPOINT_URL IMGPROC_PREBUILT=1)
  "${own_moto[@]}" scripts/test-lambda.sh
  free_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "${own_moto[@]}" E2E_MOTO_PORT="$free_port" E2E_IMAGES="${E2E_IMAGES:-5000}" scripts/e2e-lambda.sh
else
  echo "== Lambda binaries on moto: skipped (cargo test filters given; run scripts/test-lambda.sh and scripts/e2e-lambda.sh)"
fi

# API conformance fuzzing: schemathesis against shared/openapi.json and a
# running imgproc-local serve, in a network namespace of its own (~30 s).
echo "== scripts/api-conformance.sh"
scripts/api-conformance.sh

# Coverage-guided fuzzing of the CSV parser and the format sniffer,
# FUZZ_SECONDS per target (default 60; the build itself takes under a minute).
echo "== scripts/fuzz.sh"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
