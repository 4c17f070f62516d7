#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: creates .venv, installs Fugato with its test extras and the
# JavaScript SDK used by the tests, then runs lint, type checks and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

if ! command -v node >/dev/null 2>&1; then
  echo "node (>= 18) is required for the centrifuge-js tests" >&2
  exit 1
fi
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

.venv/bin/ruff check node tests loadtest
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
