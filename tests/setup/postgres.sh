#!/usr/bin/env bash
# PostgreSQL server binaries (initdb, postgres) for the outbox consumer tests, which start their own cluster
# in a temporary directory on a free loopback port (tests/postgres_server.py). Debian's package puts them in
# /usr/lib/postgresql/<version>/bin; the tests look there as well as on PATH. Nothing is started here.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing postgresql (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  # The Debian package starts a cluster on port 5432; the tests never use it, so leave it stopped.
  if command -v service >/dev/null 2>&1; then service postgresql stop >/dev/null 2>&1 || true; fi
else
  echo "PostgreSQL (initdb and postgres) is required for the consumer tests; install it, e.g." \
    "'sudo apt-get install -y postgresql'" >&2
  exit 1
fi
