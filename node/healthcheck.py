"""``python -m node.healthcheck [--config FILE]``: exit 0 when this host's node answers ``GET /health`` with 200.

The container image's ``HEALTHCHECK`` runs it. It reads the configuration as ``fugato serve`` does (the file,
then ``FUGATO_*``/``CENTRIFUGO_*`` variables), so it asks the port and prefix the server really uses: the
internal port when ``http_server.internal_port`` is set, else the main one. The image has no curl or wget,
and a check that knows the config keeps working when a user moves the port or the prefix.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from node.config import Config
from node.config_load import load
from node.errors import ConfigError


def health_url(config: Config) -> str:
    server = config.http_server
    port, address = ((server.internal_port, server.internal_address) if server.internal_port
                     else (server.port, server.address))
    # An empty or wildcard address listens on loopback too; a specific one is where the server is.
    host = "127.0.0.1" if address in ("", "0.0.0.0", "::") else address
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{config.health.handler_prefix}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.healthcheck", description=__doc__)
    parser.add_argument("-c", "--config", default=None, help="the server's config file")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        config = load(args.config, os.environ, {}).config
    except ConfigError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if not config.health.enabled:
        print("unhealthy: health.enabled is false, there is no endpoint to ask", file=sys.stderr)
        return 1
    url = health_url(config)
    try:
        # No proxy from the environment: the server is on this host.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=args.timeout) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
