#!/usr/bin/env bash
# Headless Chromium for the admin web UI browser tests (tests/integration/test_admin_ui.py): Debian's
# `chromium` (driven by Playwright for Python through executable_path, never a browser download of its own)
# and `chromium-driver` (for anyone driving it with selenium). Idempotent: installs only what is missing.
set -euo pipefail
if [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver (apt-get)" >&2
  # Another apt-get (a concurrent setup script) may hold the lock: wait for it rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
else
  echo "Debian's chromium and chromium-driver are required for the admin UI browser tests; install them, e.g." \
    "'sudo apt-get install -y chromium chromium-driver'" >&2
  exit 1
fi
