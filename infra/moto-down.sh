#!/usr/bin/env bash
# Stops the moto server that infra/moto-up.sh started (and only that one).
set -euo pipefail
port="${MOTO_PORT:-5000}"
state_dir="${MOTO_STATE_DIR:-${TMPDIR:-/tmp}/imgproc-moto-${port}}"
pid_file="$state_dir/moto.pid"
[[ -f "$pid_file" ]] || exit 0
pid="$(cat "$pid_file")"
if kill -0 "$pid" 2>/dev/null; then
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
rm -f "$pid_file"
