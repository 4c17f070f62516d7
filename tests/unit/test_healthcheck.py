"""``python -m node.healthcheck`` (the image's HEALTHCHECK): asks /health where the config says the server
serves it, and fails when it does not answer 200."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from harness import ServerFactory

from node.config_load import load
from node.healthcheck import health_url


def url_for(tmp_path: Path, config: dict[str, object], env: dict[str, str] | None = None) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return health_url(load(str(path), env or {}, {}).config)


@pytest.mark.parametrize(("config", "env", "url"), [
    ({}, {}, "http://127.0.0.1:8000/health"),
    ({"http_server": {"port": 8100}}, {}, "http://127.0.0.1:8100/health"),
    ({"http_server": {"internal_port": 9000}}, {}, "http://127.0.0.1:9000/health"),
    ({}, {"FUGATO_HTTP_SERVER_INTERNAL_PORT": "9100"}, "http://127.0.0.1:9100/health"),
    ({"health": {"handler_prefix": "/healthz"}, "http_server": {"address": "0.0.0.0"}}, {},
     "http://127.0.0.1:8000/healthz"),
    ({"http_server": {"internal_port": 9000, "internal_address": "10.1.2.3"}}, {}, "http://10.1.2.3:9000/health"),
    ({"http_server": {"address": "::1"}}, {}, "http://[::1]:8000/health"),
])
def test_the_url_follows_the_config_and_the_environment(
    tmp_path: Path, config: dict[str, object], env: dict[str, str], url: str
) -> None:
    assert url_for(tmp_path, config, env) == url


async def check(config_path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.healthcheck", "--config", str(config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_healthy_server_passes_and_a_stopped_one_fails(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = await server_factory()
    config = tmp_path / "check.json"  # the server's config with the port its command line gives it
    config.write_text(json.dumps({**server.config, "http_server": {"port": server.port}}))
    assert await check(config) == (0, "")
    await server.stop()
    code, err = await check(config)
    assert code == 1 and err.startswith("unhealthy: http://127.0.0.1:") and "/health" in err


async def test_health_disabled_or_an_invalid_config_fails(tmp_path: Path) -> None:
    config = tmp_path / "off.json"
    config.write_text(json.dumps({"health": {"enabled": False}}))
    code, err = await check(config)
    assert code == 1 and "health.enabled is false" in err
    config.write_text(json.dumps({"http_server": {"port": "not a port"}}))
    code, err = await check(config)
    assert code == 1 and err.startswith("unhealthy: ")
