#!/usr/bin/env bash
# The web page in headless Chromium: functions/local/tests/browser/test_page.py
# drives `imgproc-local serve` through WebDriver (Python selenium, pinned in
# requirements-dev.txt) and writes screenshots under artifacts/.
#
# Needs `chromium` and `chromium-driver` (Debian; .ci/run installs them).
# Without them the test is skipped with the reason printed, except in CI
# (CI set and not "false"), where that is a failure.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgproc-target}"

in_ci() { [[ -n "${CI:-}" && "${CI:-}" != "false" ]]; }

echo "== browser test of the web page"
missing=()
for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  reason="not found on PATH: ${missing[*]} (apt-get install chromium chromium-driver)"
  if in_ci; then
    echo "FAILED: the browser test cannot run in CI: $reason" >&2
    exit 1
  fi
  echo "SKIPPED: browser test of the web page: $reason"
  exit 0
fi

# selenium from PyPI, pinned in requirements-dev.txt, in the project's venv.
python=python3
if ! "$python" -c 'import selenium' 2>/dev/null; then
  venv="${IMGPROC_VENV:-$repo/.venv}"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  python="$venv/bin/python"
  if ! "$python" -c 'import selenium' 2>/dev/null; then
    echo "== installing selenium into $venv"
    grep -E '^selenium' requirements-dev.txt | sed 's/ *#.*//' | xargs "$python" -m pip install -q
  fi
fi

# The binary under test: IMGPROC_LOCAL_BIN when given (scripts/test.sh
# passes the one its `cargo test` built), else a fresh debug build.
if [[ -z "${IMGPROC_LOCAL_BIN:-}" ]]; then
  cargo build --locked -p imgproc-local
  export IMGPROC_LOCAL_BIN="$CARGO_TARGET_DIR/debug/imgproc-local"
fi
"$python" functions/local/tests/browser/test_page.py
