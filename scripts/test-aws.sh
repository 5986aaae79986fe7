#!/usr/bin/env bash
# The AWS path's tests: lints template.yaml, starts a moto server on
# 127.0.0.1 with the table, queues and bucket of infra/resources.json, runs
# the port conformance suite against the AWS adapters and the end-to-end
# tests on it, then stops the server it started. Needs python3; installs
# moto and cfn-lint from PyPI into a venv when they are missing.
#
#   scripts/test-aws.sh            # everything
#   MOTO_PORT=5055 scripts/test-aws.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if ! command -v moto_server >/dev/null 2>&1 || ! command -v cfn-lint >/dev/null 2>&1; then
  venv="${IMGPROC_VENV:-$repo/.venv}"
  if [[ ! -x "$venv/bin/moto_server" || ! -x "$venv/bin/cfn-lint" ]]; then
    echo "== installing moto and cfn-lint into $venv"
    python3 -m venv "$venv"
    # cargo-lambda (and its zig) is not needed for these tests.
    grep -E '^(moto|cfn-lint)' requirements-dev.txt | sed 's/ *#.*//' | xargs "$venv/bin/pip" install -q
  fi
  export PATH="$venv/bin:$PATH"
fi

echo "== cfn-lint template.yaml"
cfn-lint template.yaml

export MOTO_PORT="${MOTO_PORT:-5000}"
export MOTO_STATE_DIR="${MOTO_STATE_DIR:-${TMPDIR:-/tmp}/imgproc-moto-${MOTO_PORT}}"
pid_before="$(cat "$MOTO_STATE_DIR/moto.pid" 2>/dev/null || true)"
echo "== moto on 127.0.0.1:${MOTO_PORT}"
eval "$(infra/moto-up.sh)"
# Stop the server only if this run started it.
if [[ "$(cat "$MOTO_STATE_DIR/moto.pid" 2>/dev/null || true)" != "$pid_before" ]]; then
  trap 'infra/moto-down.sh' EXIT
fi

echo "== cargo test (AWS adapters and handlers on moto)"
cargo test -p imgproc-shared --features stream-poller --lib --test ports_conformance --test aws_end_to_end
