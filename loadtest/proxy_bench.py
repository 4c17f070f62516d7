"""Proxy benchmark: what the connect and publish proxies cost, each against its JWT / no-proxy twin in the same
run, on one server, with a local aiohttp backend (its own process) answering the hooks.

    python -m loadtest.proxy_bench [--connections 1000] [--concurrency 50] [--rounds 5] [--publications 3200]
                                   [--publishers 32] [--window 4] [--no-pin]

On a 2-core machine shared by the server, the backend and the load generator, rates taken in one go move a lot:
so the server is pinned to the first CPU and this process and the backend to the others (``--no-pin`` turns
that off), a warm-up round of each mode runs first, and each figure is the median of ``--rounds`` rounds, the
two modes alternating inside a round (which one goes first swaps from round to round).

* connect: ``--connections`` WebSocket connects (``--concurrency`` at a time), with a JWT and without one
  (authenticated by the connect proxy); prints connections/s and the server's CPU milliseconds per connect of
  each, and their ratios (target: proxy >= 0.7x the JWT rate).
* publish: ``--publications`` client publishes from ``--publishers`` connections, to a namespace
  with the publish proxy and to one without; prints publications/s and server CPU per publication of each.

Loopback only; bounded by the counts above; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from loadtest.bench import API_KEY, SECRET, Spawned, cpu_seconds, free_port, own_cpu, raise_fd_limit, report
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
    # A longer timeout than Centrifugo's 1s: on a shared 2-core machine the backend can stall past a second, and
    # a run measures throughput, not the fault path (tests/integration/test_proxies.py covers that).
    return {
        "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["*"],
                   "proxy": {"connect": {"enabled": True, "endpoint": f"{backend}/connect", "timeout": "10s"}}},
        "channel": {"proxy": {"publish": {"endpoint": f"{backend}/publish", "timeout": "10s"}},
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
                        backend_pid: int | None = None) -> dict[str, float]:
    """Connects/s and the server's CPU per connect; also what the load generator and the backend spent (on a
    loaded machine their core, not the server's, may be what bounds the rate)."""
    writers: list[asyncio.StreamWriter] = []
    next_index = iter(range(n))

    async def worker() -> None:
        for i in next_index:
            writers.append(await _ws_connect("127.0.0.1", port, tokens[i]))

    others = [backend_pid] if backend_pid is not None else []
    cpu0, others0 = cpu_seconds(server_pid), cpu_seconds(others) + own_cpu()
    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - started
    cpu, others_cpu = cpu_seconds(server_pid) - cpu0, cpu_seconds(others) + own_cpu() - others0
    for w in writers:
        w.close()
    return {"connections_per_s": n / seconds, "server_cpu_ms_per_connection": cpu * 1000 / n,
            "generator_and_backend_cpu_ms_per_connection": others_cpu * 1000 / n}


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


def pin(server_pid: int, backend_pid: int | None) -> str:
    """The server alone on the first CPU; this process and the backend on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    os.sched_setaffinity(server_pid, {cpus[0]})
    os.sched_setaffinity(0, set(cpus[1:]))
    if backend_pid is not None:
        os.sched_setaffinity(backend_pid, set(cpus[1:]))
    return f"server on CPU {cpus[0]}, load generator and backend on CPUs {cpus[1:]}"


def median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


async def connect_rounds(args: argparse.Namespace, port: int, pid: int, backend_pid: int | None,
                         ) -> tuple[dict[str, float], ...]:
    """Median figures of the JWT and the proxied connect storms, and of their per-round ratios."""
    n = args.connections
    jwts = [jwt.encode({"sub": f"u{i}"}, SECRET, algorithm="HS256") for i in range(n)]
    modes = {"jwt": jwts, "proxy": [""] * n}
    for tokens in modes.values():  # warm-up: imports, pools, the backend's first connections
        await connect_storm(port, min(n, 200), args.concurrency, tokens, pid, backend_pid)
        await drained(port)
    results: dict[str, list[dict[str, float]]] = {"jwt": [], "proxy": []}
    ratios: list[dict[str, float]] = []
    for i in range(args.rounds):
        order = ("jwt", "proxy") if i % 2 == 0 else ("proxy", "jwt")
        this: dict[str, dict[str, float]] = {}
        for mode in order:
            this[mode] = await connect_storm(port, n, args.concurrency, modes[mode], pid, backend_pid)
            await drained(port)
            results[mode].append(this[mode])
        ratios.append({"rate": this["proxy"]["connections_per_s"] / this["jwt"]["connections_per_s"],
                       "cpu": this["proxy"]["server_cpu_ms_per_connection"]
                       / this["jwt"]["server_cpu_ms_per_connection"]})
        print(f"  round {i + 1}: JWT {this['jwt']['connections_per_s']:,.0f}/s "
              f"{this['jwt']['server_cpu_ms_per_connection']:.3f} ms CPU, proxy "
              f"{this['proxy']['connections_per_s']:,.0f}/s {this['proxy']['server_cpu_ms_per_connection']:.3f} ms "
              f"CPU, ratio {ratios[-1]['rate']:.2f}", flush=True)
    keys = ("connections_per_s", "server_cpu_ms_per_connection", "generator_and_backend_cpu_ms_per_connection")
    jwt_med = {k: median(results["jwt"], k) for k in keys}
    proxy_med = {k: median(results["proxy"], k) for k in keys}
    return jwt_med, proxy_med, {"rate": median(ratios, "rate"), "cpu": median(ratios, "cpu")}


async def publish_rounds(args: argparse.Namespace, port: int, pid: int) -> tuple[dict[str, float], ...]:
    channels = {"plain": "plain:bench", "proxy": "px:bench"}
    for channel in channels.values():  # warm-up
        await publish_run(port, channel, args.publishers * 8, args.publishers, args.window, pid)
    results: dict[str, list[dict[str, float]]] = {"plain": [], "proxy": []}
    ratios: list[dict[str, float]] = []
    for i in range(args.rounds):
        order = ("plain", "proxy") if i % 2 == 0 else ("proxy", "plain")
        this = {mode: await publish_run(port, channels[mode], args.publications, args.publishers, args.window, pid)
                for mode in order}
        for mode, r in this.items():
            results[mode].append(r)
        ratios.append({"rate": this["proxy"]["publications_per_s"] / this["plain"]["publications_per_s"]})
    keys = ("publications_per_s", "server_cpu_us_per_publication")
    return ({k: median(results["plain"], k) for k in keys}, {k: median(results["proxy"], k) for k in keys},
            {"rate": median(ratios, "rate")})


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit()
    backend_port = free_port()
    ctx = multiprocessing.get_context("spawn")
    backend = ctx.Process(target=backend_main, args=(backend_port,), daemon=True)
    backend.start()
    server = Spawned("fugato", engine=server_config(f"http://127.0.0.1:{backend_port}"))
    all_cpus = os.sched_getaffinity(0)
    try:
        await server.wait_ready()
        await backend_ready(backend_port)
        pid = server.proc.pid
        print("pinning:", pin(pid, backend.pid) if args.pin else "off", flush=True)
        print(f"connect: {args.connections} connections, {args.concurrency} at a time, median of {args.rounds} "
              "rounds", flush=True)
        jwt_result, proxy_result, connect_ratio = await connect_rounds(args, server.port, pid, backend.pid)
        report("connect with JWT", jwt_result)
        report("connect through the connect proxy (local aiohttp backend)", proxy_result)
        plain, proxied, publish_ratio = await publish_rounds(args, server.port, pid)
        report(f"publish without a proxy: {args.publications} publications from {args.publishers} connections, "
               f"{args.window} in flight each", plain)
        report("publish through the publish proxy", proxied)
        print(f"connect proxy / JWT connections per second: {connect_ratio['rate']:.2f} (target >= 0.7); "
              f"server CPU per connect {proxy_result['server_cpu_ms_per_connection']:.3f} vs "
              f"{jwt_result['server_cpu_ms_per_connection']:.3f} ms ({connect_ratio['cpu']:.2f}x)")
        print(f"publish proxy / no proxy publications per second: {publish_ratio['rate']:.2f} (server CPU per "
              f"publication {proxied['server_cpu_us_per_publication']:.0f} vs "
              f"{plain['server_cpu_us_per_publication']:.0f} us)")
    finally:
        os.sched_setaffinity(0, all_cpus)
        server.stop()
        backend.terminate()
        backend.join(5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--publications", type=int, default=3200)
    parser.add_argument("--publishers", type=int, default=32, help="publishing connections")
    parser.add_argument("--window", type=int, default=4, help="publications in flight per connection")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each mode (the median is reported)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPU placement to the kernel")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
