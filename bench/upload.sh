#!/usr/bin/env bash
# Target 6 of BENCHMARKS.md: how long a 10,000-row CSV with 30,000 image URLs
# takes to be accepted (upload sent → 202 received),
#   1. by a release build of `imgproc-local serve` (SQLite, filesystem), over
#      HTTP with curl;
#   2. by the AWS `upload` function's router on a moto server
#      (shared/benches/upload_on_moto.rs).
#
#   bench/upload.sh                       # 3 uploads each
#   UPLOAD_RUNS=5 UPLOAD_ROWS=2000 bench/upload.sh   # other counts (3 URLs a row)
#   UPLOAD_TARGETS=moto UPLOAD_ROWS=100 bench/upload.sh   # one of "local moto"
#
# moto's SQS rescans its whole queue for every message sent, so on moto keep
# UPLOAD_ROWS in the hundreds (BENCHMARKS.md has the figures and the cause).
# The URLs point at a closed loopback port, so the local workers that pick
# the images up fail fast instead of downloading anything.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"
export UPLOAD_RUNS="${UPLOAD_RUNS:-3}"
rows="${UPLOAD_ROWS:-10000}"
targets="${UPLOAD_TARGETS:-local moto}"
# shellcheck source=scripts/dev-tools.sh
source scripts/dev-tools.sh

work="$(mktemp -d)"
serve_pid=""
cleanup() {
  [[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export UPLOAD_CSV="$work/products.csv"
python3 - "$UPLOAD_CSV" "$rows" <<'PY'
import sys
with open(sys.argv[1], "w", newline="") as f:
    f.write("S. No.,Product Name,Input Image Urls\n")
    for n in range(1, int(sys.argv[2]) + 1):
        urls = ",".join(f"http://127.0.0.1:9/catalogue/{n}/photo-{k}.jpg" for k in range(1, 4))
        f.write(f'{n},Product {n},"{urls}"\n')
PY
echo "== CSV: $rows rows, $((rows * 3)) URLs, $(stat -c %s "$UPLOAD_CSV") bytes"

if [[ " $targets " == *" local "* ]]; then
  echo "== cargo build --release -p imgproc-local"
  cargo build --release --locked -q -p imgproc-local
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  ALLOW_PRIVATE_NETWORKS=true MAX_ATTEMPTS=1 RUST_LOG=warn \
    "$CARGO_TARGET_DIR/release/imgproc-local" serve --addr "127.0.0.1:$port" --data-dir "$work/data" >"$work/serve.log" 2>&1 &
  serve_pid=$!
  deadline=$((SECONDS + 30))
  until curl -fs "http://127.0.0.1:$port/health" >/dev/null; do
    ((SECONDS < deadline)) || { cat "$work/serve.log" >&2; echo "serve did not start" >&2; exit 1; }
    sleep 0.1
  done
  for run in $(seq 1 "$UPLOAD_RUNS"); do
    out="$(curl -fsS -o "$work/answer.json" -w '%{http_code} %{time_total}' \
      -H 'Content-Type: text/csv' --data-binary "@$UPLOAD_CSV" "http://127.0.0.1:$port/v1/requests")"
    read -r code seconds <<<"$out"
    [[ "$code" == 202 ]] || { cat "$work/answer.json" >&2; exit 1; }
    printf 'local serve, run %s: %.2f s (%s)\n' "$run" "$seconds" "$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); print(a["products"], "products,", a["images"], "images")' "$work/answer.json")"
  done
  kill "$serve_pid"
  serve_pid=""
fi
[[ " $targets " == *" moto "* ]] || exit 0

start_moto
# start_moto replaces the EXIT trap when it started moto; keep both.
if [[ "$(trap -p EXIT)" == *moto-down* ]]; then
  trap 'cleanup; "$repo/infra/moto-down.sh"' EXIT
else
  trap cleanup EXIT
fi
echo "== cargo bench --bench upload_on_moto"
cargo bench --locked -q -p imgproc-shared --features aws --bench upload_on_moto
