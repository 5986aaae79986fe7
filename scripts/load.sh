#!/usr/bin/env bash
# Load figures for the read side of the API: builds imgproc-local in release,
# serves it from a temporary data folder, stores one finished request of 50
# products / 100 images, then drives `wrk` (Debian package `wrk`) at
#   GET /health
#   GET /v1/requests/{id}?limit=100    (the full status page, from SQLite)
# and prints requests/s and latency percentiles for each.
#
#   scripts/load.sh                     # 2 threads, 64 connections, 20 s per route
#   LOAD_CONNECTIONS=256 LOAD_DURATION=60s scripts/load.sh
#
# The request's image URLs point at the loopback, which the network guard
# refuses at once: the request is terminal in milliseconds and nothing
# leaves the machine. Not run in CI (it needs a release build).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"
threads="${LOAD_THREADS:-2}"
connections="${LOAD_CONNECTIONS:-64}"
duration="${LOAD_DURATION:-20s}"
port="${LOAD_PORT:-3099}"

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --locked -p imgproc-local
bin="$CARGO_TARGET_DIR/release/imgproc-local"

data="$(mktemp -d)"
RUST_LOG=warn "$bin" serve --addr "127.0.0.1:$port" --data-dir "$data" >"$data/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null && break
  sleep 0.1
done

csv="$data/products.csv"
echo "S. No.,Product Name,Input Image Urls" >"$csv"
for i in $(seq 1 50); do
  echo "$i,Product $i,\"http://127.0.0.1:9/$i/a.jpg,http://127.0.0.1:9/$i/b.jpg\"" >>"$csv"
done
id="$(curl -fsS -X POST "http://127.0.0.1:$port/v1/requests" -H 'Content-Type: text/csv' --data-binary @"$csv" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["request_id"])')"
status_url="http://127.0.0.1:$port/v1/requests/$id?limit=100"
for _ in $(seq 1 100); do
  curl -fsS "$status_url" | grep -q '"completed_at":"' && break
  sleep 0.1
done
bytes="$(curl -fsS "$status_url" | wc -c)"

echo
echo "imgproc-local serve (release), wrk -t$threads -c$connections -d$duration, $(nproc) cores"
printf '%-36s %12s %10s %10s %10s\n' route "requests/s" p50 p90 p99
for route in "/health" "/v1/requests/{id}?limit=100 (${bytes} B)"; do
  url="http://127.0.0.1:$port/health"
  [[ "$route" == /health ]] || url="$status_url"
  out="$(wrk -t"$threads" -c"$connections" -d"$duration" --latency "$url")"
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$out" >&2
    echo "non-2xx answers under load" >&2
    exit 1
  fi
  rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
  pct() { awk -v p="$1%" '$1 == p { print $2 }' <<<"$out"; }
  printf '%-36s %12s %10s %10s %10s\n' "$route" "$rps" "$(pct 50)" "$(pct 90)" "$(pct 99)"
done
