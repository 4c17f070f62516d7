"""``http_server.internal_port``: the API, health and metrics move to the internal port, as in Centrifugo."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
from harness import API_KEY, REPO, free_port, make_config, wait_until


async def test_api_and_health_on_internal_port_only(tmp_path: Path) -> None:
    port, internal = free_port(), free_port()
    config = make_config({"http_server": {"internal_port": internal}, "prometheus": {"enabled": True}})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "serve", "--config", str(path), "--port", str(port), "--host", "127.0.0.1",
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http:
            async def status(url: str, method: str = "GET") -> int:
                try:
                    async with http.request(method, url, headers={"X-API-Key": API_KEY}, data=b"{}") as resp:
                        return resp.status
                except aiohttp.ClientConnectionError:
                    return 0

            await wait_until(lambda: status(f"http://127.0.0.1:{internal}/health"), timeout=15)
            assert await status(f"http://127.0.0.1:{internal}/api/info", "POST") == 200
            assert await status(f"http://127.0.0.1:{internal}/metrics") == 200
            assert await status(f"http://127.0.0.1:{port}/api/info", "POST") == 404
            assert await status(f"http://127.0.0.1:{port}/health") == 404
            async with http.ws_connect(f"http://127.0.0.1:{port}/connection/websocket") as ws:
                await ws.send_str(json.dumps({"id": 1, "connect": {}}))
                msg = await ws.receive(5)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 3501  # websocket lives on the main port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
        log.close()
    assert proc.returncode == 0
