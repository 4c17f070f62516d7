#!/usr/bin/env bash
# nats-server for the NATS broker tests (they start their own, with JetStream, on free loopback ports).
set -euo pipefail
if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing nats-server (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
else
  echo "nats-server (>= 2.9) is required for the NATS broker tests; install it, e.g." \
    "'sudo apt-get install -y nats-server' (Debian/Ubuntu) or 'brew install nats-server' (macOS)" >&2
  exit 1
fi
