#!/usr/bin/env bash
# One N-image request end to end through the real Lambda binaries, wired as
# template.yaml wires them, on a moto server of its own:
#   cargo build of every function binary the template names,
#   moto (infra/moto_serial_server.py) on 127.0.0.1:$E2E_MOTO_PORT,
#   the Lambda emulator (infra/lambda_emulator.py) with its HTTP API,
#   a loopback image server and webhook receiver (infra/loopback.py),
# then infra/e2e_lambda.py uploads the CSV through the emulated API Gateway
# and checks the outcome (see that file). Figures on the last line
# (E2E_RESULT {...}).
#
#   scripts/e2e-lambda.sh                      # 5,000 images (CI)
#   E2E_IMAGES=50000 scripts/e2e-lambda.sh     # the catalogue-scale run (4 MB CSV)
#
# Environment: E2E_IMAGES (5000), E2E_MOTO_PORT (5090), E2E_PROFILE (debug
# or release), E2E_SQS_CONCURRENCY (2 pollers, so instances, per SQS event
# source), E2E_DEADLINE (seconds to terminal; default 600 + 0.5 s per
# image), E2E_MAX_ITEM_WRITES (most writes one item may take; default 1 %
# of the images, 0 only reports), E2E_VIA (api, or s3 to submit through the
# incoming/ drop), E2E_WORK_DIR (logs; a temporary directory).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"
# shellcheck source=scripts/dev-tools.sh
source scripts/dev-tools.sh

images="${E2E_IMAGES:-5000}"
port="${E2E_MOTO_PORT:-5090}"
profile="${E2E_PROFILE:-debug}"
work="${E2E_WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/imgproc-e2e.XXXXXX")}"
mkdir -p "$work"
deadline="${E2E_DEADLINE:-$((600 + images / 2))}"

# Each function binary is the package of the same name (functions/*); `-p`
# (not `--bin`) keeps the feature set of the workspace's other builds, so a
# warm target directory stays warm.
mapfile -t bins < <(python3 infra/lambda_emulator.py --list-binaries --template template.yaml)
echo "== cargo build ($profile): ${bins[*]}"
build=(cargo build --locked)
[[ "$profile" == release ]] && build+=(--release)
for b in "${bins[@]}"; do build+=(-p "$b"); done
# scripts/test.sh builds every binary once, with the test suite's
# features, and says so with IMGPROC_PREBUILT=1.
[[ "${IMGPROC_PREBUILT:-}" == 1 ]] || "${build[@]}"

moto_pid=""
emu_pid=""
cleanup() {
  local rc=$?
  if [[ -n "$emu_pid" ]] && kill -0 "$emu_pid" 2>/dev/null; then
    kill -TERM "$emu_pid"
    for _ in $(seq 100); do kill -0 "$emu_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$emu_pid" 2>/dev/null || true
  fi
  if [[ -n "$moto_pid" ]] && kill -0 "$moto_pid" 2>/dev/null; then
    kill "$moto_pid"
    wait "$moto_pid" 2>/dev/null || true
  fi
  if ((rc != 0)); then
    echo "== failed; logs in $work" >&2
    for f in "$work"/emulator.log "$work"/logs/*.log; do
      [[ -f "$f" ]] || continue
      echo "--- tail of $f" >&2
      tail -n 15 "$f" >&2
    done
  fi
  exit "$rc"
}
trap cleanup EXIT

echo "== moto on 127.0.0.1:$port (log $work/moto.log)"
if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/moto-api/data.json" 2>/dev/null; then
  echo "something already answers on port $port: set E2E_MOTO_PORT" >&2
  exit 1
fi
python3 infra/moto_serial_server.py 127.0.0.1 "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
deadline_moto=$((SECONDS + 30))
until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/moto-api/data.json" 2>/dev/null; do
  kill -0 "$moto_pid" 2>/dev/null || { cat "$work/moto.log" >&2; exit 1; }
  ((SECONDS < deadline_moto)) || { echo "moto did not start within 30 s" >&2; exit 1; }
  sleep 0.2
done

# The stack's API client and webhook key, passed as template parameters:
# the emulator keeps them in Secrets Manager secrets on moto and the
# functions read them at cold start, as on AWS.
E2E_API_TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export E2E_API_TOKEN
webhook_secret="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"

echo "== Lambda emulator (logs in $work/logs)"
python3 infra/lambda_emulator.py \
  --template template.yaml \
  --param "ApiTokens=e2e:$E2E_API_TOKEN" \
  --param "WebhookSecret=$webhook_secret" \
  --endpoint "http://127.0.0.1:$port" \
  --bin-dir "$CARGO_TARGET_DIR/$profile" \
  --env ALLOW_PRIVATE_NETWORKS=true \
  --sqs-concurrency "${E2E_SQS_CONCURRENCY:-2}" \
  --log-dir "$work/logs" \
  --ready-file "$work/ready.json" >"$work/emulator.log" 2>&1 &
emu_pid=$!
deadline_emu=$((SECONDS + 180))
until [[ -f "$work/ready.json" ]]; do
  kill -0 "$emu_pid" 2>/dev/null || { echo "the emulator stopped:" >&2; cat "$work/emulator.log" >&2; exit 1; }
  ((SECONDS < deadline_emu)) || { echo "the emulator was not ready within 180 s" >&2; exit 1; }
  sleep 0.5
done

driver=(python3 infra/e2e_lambda.py --ready "$work/ready.json" --images "$images" --deadline "$deadline" --via "${E2E_VIA:-api}")
[[ -n "${E2E_MAX_ITEM_WRITES:-}" ]] && driver+=(--max-item-writes "$E2E_MAX_ITEM_WRITES")
"${driver[@]}"
