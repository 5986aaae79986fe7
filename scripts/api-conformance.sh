#!/usr/bin/env bash
# API conformance fuzzing: schemathesis (PyPI, pinned in requirements-dev.txt)
# generates requests from shared/openapi.json and sends them to a running
# `imgproc-local serve`; every response must be a non-5xx that matches the
# document (status code, content type, headers, body schema), with
# API_TOKEN set so that auth is exercised too.
#
# Both run inside a network namespace of their own (`unshare -rn`) where only
# the loopback exists: the image and webhook URLs schemathesis invents can
# never reach, or even resolve, a host outside this machine.
#
#   scripts/api-conformance.sh            # about a minute
#   API_FUZZ_EXAMPLES=500 scripts/api-conformance.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"
examples="${API_FUZZ_EXAMPLES:-100}"

if [[ "${1:-}" != "--inside" ]]; then
  # schemathesis into the same venv as moto and cfn-lint.
  venv="${IMGPROC_VENV:-$repo/.venv}"
  if [[ ! -x "$venv/bin/schemathesis" ]]; then
    echo "== installing schemathesis into $venv"
    [[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv"
    grep -E '^schemathesis' requirements-dev.txt | sed 's/ *#.*//' | xargs "$venv/bin/pip" install -q
  fi
  echo "== build imgproc-local (as scripts/test.sh does)"
  # The very build scripts/test.sh makes (tests included, so dev-dependency
  # features unify the same way): after it, nothing is rebuilt.
  cargo test --no-run --locked --workspace --features imgproc-shared/stream-poller
  if ! unshare -rn true 2>/dev/null; then
    echo "api-conformance: cannot create a network namespace here (unshare -rn); refusing to fuzz with outside network access" >&2
    exit 1
  fi
  exec unshare -rn env PATH="$venv/bin:$PATH" "$0" --inside
fi

# Inside the namespace: only the loopback, which starts down.
ip link set lo up 2>/dev/null || python3 - <<'PY'
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ifr = struct.pack("16sH", b"lo", 0)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, ifr))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
PY

port=3077
token="conformance-token"
data="$(mktemp -d)"
API_TOKEN="$token" MAX_ATTEMPTS=1 FETCH_TIMEOUT_SECS=2 RUST_LOG=warn \
  "$CARGO_TARGET_DIR/debug/imgproc-local" serve --addr "127.0.0.1:$port" --public-url "http://127.0.0.1:$port" --data-dir "$data" >"$data/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null && break
  sleep 0.1
done

echo "== schemathesis: $examples examples per operation against imgproc-local serve"
# positive_data_acceptance is left out: the document types a CSV body as a
# string, and most strings are not a valid CSV of products (400 invalid_csv,
# as documented); every other check runs.
SCHEMATHESIS_HOOKS=scripts.schemathesis_hooks PYTHONPATH="$repo" \
  schemathesis --no-color run shared/openapi.json \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $token" \
  --checks all --exclude-checks positive_data_acceptance \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$examples" \
  --workers 1 \
  --seed 20261128 \
  --suppress-health-check too_slow,filter_too_much
if grep -q "panicked" "$data/serve.log"; then
  echo "the server panicked:" >&2
  grep -A5 "panicked" "$data/serve.log" >&2
  exit 1
fi
