# Sourced by the test scripts: puts moto_server, cfn-lint and pytest (PyPI,
# pinned in requirements-dev.txt) on PATH, installing them into a venv when
# missing. cargo-lambda is not needed for the tests and is left out.
if ! command -v moto_server >/dev/null 2>&1 || ! command -v cfn-lint >/dev/null 2>&1 \
  || ! python3 -c 'import pytest, pytest_timeout' 2>/dev/null; then
  venv="${IMGPROC_VENV:-$repo/.venv}"
  if [[ ! -x "$venv/bin/moto_server" || ! -x "$venv/bin/cfn-lint" || ! -x "$venv/bin/pytest" ]]; then
    echo "== installing moto, cfn-lint and pytest into $venv"
    python3 -m venv "$venv"
    grep -E '^(moto|boto3|botocore|cfn-lint|pytest)' "$repo/requirements-dev.txt" | sed 's/ *#.*//' | xargs "$venv/bin/pip" install -q
  fi
  export PATH="$venv/bin:$PATH"
fi

# Starts moto on 127.0.0.1:$MOTO_PORT with the resources of infra/resources.json,
# exports the environment the AWS tests read, and stops it on exit if this
# shell started it.
start_moto() {
  export MOTO_PORT="${MOTO_PORT:-5000}"
  export MOTO_STATE_DIR="${MOTO_STATE_DIR:-${TMPDIR:-/tmp}/imgproc-moto-${MOTO_PORT}}"
  local pid_before
  pid_before="$(cat "$MOTO_STATE_DIR/moto.pid" 2>/dev/null || true)"
  echo "== moto on 127.0.0.1:${MOTO_PORT}"
  eval "$("$repo/infra/moto-up.sh")"
  if [[ "$(cat "$MOTO_STATE_DIR/moto.pid" 2>/dev/null || true)" != "$pid_before" ]]; then
    trap '"$repo/infra/moto-down.sh"' EXIT
  fi
}
