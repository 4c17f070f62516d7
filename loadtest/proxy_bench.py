"""Proxy benchmark: what the connect and publish proxies cost, each against its JWT / no-proxy twin in the same
run, on one server, with a local aiohttp backend (its own process) answering the hooks.

    python -m loadtest.proxy_bench [--connections 2000] [--concurrency 50] [--publications 6400]
                                   [--publishers 32] [--window 4]

* connect: ``--connections`` WebSocket connects (``--concurrency`` at a time), with a JWT and then without one
  (authenticated by the connect proxy); prints connections/s of each and their ratio (target >= 0.7).
* publish: ``--publications`` client publishes from ``--publishers`` connections, to a namespace
  with the publish proxy and to one without; prints publications/s of each and their ratio.

Loopback only; bounded by the counts above; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import sys
import time
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from loadtest.bench import API_KEY, SECRET, Spawned, cpu_seconds, free_port, raise_fd_limit, report
from loadtest.swarm import _frame


def backend_main(port: int) -> None:
    """The application backend: answers connect and publish as fast as aiohttp can."""

    async def connect(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"result": {"user": "p" + body["client"][:8]}})

    async def publish(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"result": {}})

    app = web.Application()
    app.router.add_post("/connect", connect)
    app.router.add_post("/publish", publish)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def server_config(backend: str) -> dict[str, Any]:
    """Merged over the bench server's config: a connect proxy (for token-less connects) and two namespaces."""
    return {
        "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["*"],
                   "proxy": {"connect": {"enabled": True, "endpoint": f"{backend}/connect"}}},
        "channel": {"proxy": {"publish": {"endpoint": f"{backend}/publish"}},
                    "namespaces": [{"name": "px", "publish_proxy_enabled": True},
                                   {"name": "plain", "allow_publish_for_client": True}]},
    }


async def _ws_connect(host: str, port: int, token: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /connection/websocket HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    payload = json.dumps({"id": 1, "connect": {"token": token}}).encode()
    writer.write(_frame(payload))
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    reply = await reader.readexactly(size)
    if b'"connect"' not in reply:
        raise RuntimeError(f"connect refused: {reply[:200]!r}")
    return writer


async def connect_storm(port: int, n: int, concurrency: int, tokens: list[str], server_pid: int,
                        ) -> dict[str, float]:
    writers: list[asyncio.StreamWriter] = []
    next_index = iter(range(n))

    async def worker() -> None:
        for i in next_index:
            writers.append(await _ws_connect("127.0.0.1", port, tokens[i]))

    cpu0 = cpu_seconds(server_pid)
    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - started
    cpu = cpu_seconds(server_pid) - cpu0
    for w in writers:
        w.close()
    return {"connections_per_s": n / seconds, "server_cpu_ms_per_connection": cpu * 1000 / n}


async def _publisher(port: int, channel: str, n: int, window: int) -> None:
    token = jwt.encode({"sub": "publisher"}, SECRET, algorithm="HS256")
    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{port}/connection/websocket") as ws:
        await ws.send_str(json.dumps({"id": 1, "connect": {"token": token}}))
        await ws.receive()
        sent = done = errors = 0
        while done < n:
            while sent < n and sent - done < window:
                sent += 1
                await ws.send_str(json.dumps({"id": sent + 1, "publish": {"channel": channel, "data": {"n": sent}}}))
            msg = await ws.receive()
            for line in msg.data.splitlines():
                done += 1
                errors += '"error"' in line
    if errors:
        raise RuntimeError(f"{errors} publishes to {channel} failed")


async def backend_ready(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # the backend process offers nothing to wait on but its port
            continue
        writer.close()
        return
    raise RuntimeError("the backend did not start")


async def drained(port: int) -> None:
    """Wait until the server has no connections left: the closes of one run must not be billed to the next."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as s:
        while time.monotonic() < deadline:
            async with s.post(f"http://127.0.0.1:{port}/api/info", json={}) as resp:
                nodes = (await resp.json())["result"]["nodes"]
            if sum(n["num_clients"] for n in nodes) == 0:
                return
            await asyncio.sleep(0.1)  # the server offers no event for "all closed"
    raise RuntimeError("connections did not close within 60 s")


async def publish_run(port: int, channel: str, n: int, publishers: int, window: int, server_pid: int,
                      ) -> dict[str, float]:
    """``n`` publications from ``publishers`` connections (a connection's commands run one after another, as
    in Centrifugo, so a proxied publish waits for the backend before the next one of that connection)."""
    cpu0 = cpu_seconds(server_pid)
    started = time.monotonic()
    await asyncio.gather(*(_publisher(port, channel, n // publishers, window) for _ in range(publishers)))
    seconds = time.monotonic() - started
    total = n // publishers * publishers
    return {"publications_per_s": total / seconds,
            "server_cpu_us_per_publication": (cpu_seconds(server_pid) - cpu0) * 1e6 / total}


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit()
    backend_port = free_port()
    ctx = multiprocessing.get_context("spawn")
    backend = ctx.Process(target=backend_main, args=(backend_port,), daemon=True)
    backend.start()
    server = Spawned("fugato", engine=server_config(f"http://127.0.0.1:{backend_port}"))
    try:
        await server.wait_ready()
        await backend_ready(backend_port)
        pid = server.proc.pid
        jwts = [jwt.encode({"sub": f"u{i}"}, SECRET, algorithm="HS256") for i in range(args.connections)]
        jwt_result = await connect_storm(server.port, args.connections, args.concurrency, jwts, pid)
        await drained(server.port)
        proxy_result = await connect_storm(server.port, args.connections, args.concurrency,
                                           [""] * args.connections, pid)
        await drained(server.port)
        report(f"connect with JWT: {args.connections} connections, {args.concurrency} at a time", jwt_result)
        report("connect through the connect proxy (local aiohttp backend)", proxy_result)
        connect_ratio = proxy_result["connections_per_s"] / jwt_result["connections_per_s"]
        plain = await publish_run(server.port, "plain:bench", args.publications, args.publishers, args.window, pid)
        proxied = await publish_run(server.port, "px:bench", args.publications, args.publishers, args.window, pid)
        report(f"publish without a proxy: {args.publications} publications from {args.publishers} connections, "
               f"{args.window} in flight each", plain)
        report("publish through the publish proxy", proxied)
        publish_ratio = proxied["publications_per_s"] / plain["publications_per_s"]
        print(f"connect proxy / JWT connections per second: {connect_ratio:.2f} (target >= 0.7)")
        print(f"publish proxy / no proxy publications per second: {publish_ratio:.2f}")
    finally:
        server.stop()
        backend.terminate()
        backend.join(5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--publications", type=int, default=6400)
    parser.add_argument("--publishers", type=int, default=32, help="publishing connections")
    parser.add_argument("--window", type=int, default=4, help="publications in flight per connection")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
