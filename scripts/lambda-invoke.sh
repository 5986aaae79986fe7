#!/usr/bin/env bash
# Every function answers its infra/events fixture under `cargo lambda watch`
# + `cargo lambda invoke`, against the resources on a moto server. Needs
# cargo-lambda (pip install -r requirements-dev.txt). Slow the first time:
# watch builds each function on its first invocation.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if ! command -v cargo-lambda >/dev/null 2>&1; then
  venv="${IMGPROC_VENV:-$repo/.venv}"
  [[ -x "$venv/bin/cargo-lambda" ]] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q -r requirements-dev.txt; }
  export PATH="$venv/bin:$PATH"
fi

export MOTO_PORT="${MOTO_PORT:-5000}"
export MOTO_STATE_DIR="${MOTO_STATE_DIR:-${TMPDIR:-/tmp}/imgproc-moto-${MOTO_PORT}}"
pid_before="$(cat "$MOTO_STATE_DIR/moto.pid" 2>/dev/null || true)"
eval "$(infra/moto-up.sh)"
moto_started=false
[[ "$(cat "$MOTO_STATE_DIR/moto.pid" 2>/dev/null || true)" != "$pid_before" ]] && moto_started=true

# The ingest fixture names incoming/products.csv in the emulated bucket.
python3 - "$repo/examples/products.csv" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
s3.upload_file(sys.argv[1], os.environ["BUCKET"], "incoming/products.csv")
PY

port="${LAMBDA_PORT:-9000}"
log="$MOTO_STATE_DIR/cargo-lambda-watch.log"
export RUST_LOG="${RUST_LOG:-info}"
# The API functions start only with a token or an explicit opt-out, and
# upload and ingest need the request ID secret.
export ALLOW_ANONYMOUS="${ALLOW_ANONYMOUS:-true}"
export REQUEST_ID_SECRET="${REQUEST_ID_SECRET:-local-invoke-request-id-secret-0123456789}"
setsid cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$port" >"$log" 2>&1 </dev/null &
watch_pid=$!
cleanup() {
  kill -- "-$watch_pid" 2>/dev/null || true
  if $moto_started; then infra/moto-down.sh; fi
}
trap cleanup EXIT

deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null "http://127.0.0.1:${port}/" 2>/dev/null || curl -sS -o /dev/null "http://127.0.0.1:${port}/" 2>/dev/null; do
  (( SECONDS < deadline )) || { echo "cargo lambda watch did not start; its log:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.5
done

failed=0
for fn in status upload ingest fanout process deadletter notify deliver; do
  echo "== $fn"
  if out="$(cargo lambda invoke "$fn" --invoke-address 127.0.0.1 --invoke-port "$port" --data-file "infra/events/$fn.json" 2>&1)"; then
    echo "$out"
  else
    echo "$out" >&2
    echo "FAILED: $fn" >&2
    failed=$((failed + 1))
  fi
done
echo "$((6 - failed)) passed, $failed failed"
[[ $failed -eq 0 ]]
