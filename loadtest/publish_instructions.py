"""Instructions per single ``POST /api/publish`` (or, ``--mode map``, ``/api/map_publish``) request, counted by
valgrind's callgrind, so the figure does not depend on how loaded the machine is (issue 18's single-publish path).

    python -m loadtest.publish_instructions [--mode publish|map] [--engines memory redis redis_cluster redis_map]
                                            [--requests 2000] [--connections 64] [--tree DIR ...]

``--mode map`` sets one of 1000 keys of one of 100 channels of a persistent map namespace (stream 1000) per
request; ``redis_map`` is the memory engine with a Redis ``map_broker`` (``redis`` also keeps map state in
Redis, as the engine's broker). The WebSocket subscriber (of the stream channel ``bench0``) then receives
nothing: the figure is the request path, publish against map_publish, not the fan-out.

One process runs the real server (``node.server.serve``: the API fast path in front of aiohttp on a loopback
port) with the load generator of ``loadtest.engine_throughput``'s ``single`` mode: C keep-alive connections,
each sending its next ``/api/publish`` (one of 100 channels, history 100) as soon as the previous reply is in,
and a WebSocket subscriber of one channel, so the PUB/SUB receive side and the hub's fan-out run as there. Redis
(standalone, and a 3-master Cluster) runs in its own processes, not counted. After a warm-up, only the
measured requests are counted (``CALLGRIND_START_INSTRUMENTATION`` / ``CALLGRIND_DUMP_STATS`` from
``loadtest.fanout_instructions``'s small C library). The figure includes the load generator's share (about
the same in any tree), so compare trees with it rather than read it as the server's cost alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from loadtest import bench
from loadtest.engine_throughput import PAD, Caller, Counts, single_request

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = 100
SECRET = "publish-instructions-secret-of-32-bytes"


def map_request(i: int) -> tuple[bytes, int]:
    body = b'{"channel":"maps:bench%d","key":"k%d","data":{"t":%d,"p":"%s"}}' % (
        i % CHANNELS, i % 1000, time.time_ns(), PAD)
    return body, 1


class Measured(Caller):
    """engine_throughput's caller, sending while the run's target is not reached; ``finished`` is set once every
    request sent has been answered."""

    def __init__(self, counts: Counts, offset: int, target: list[int], finished: asyncio.Event, mode: str) -> None:
        path, make = (b"/api/map_publish", map_request) if mode == "map" else (b"/api/publish", single_request)
        super().__init__(path, make, counts, offset, asyncio.get_running_loop().create_future())
        self.target, self.finished = target, finished
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport  # the first request goes out with the run, not now

    def send(self) -> None:
        """Called by the run, and after each reply (then this caller's request is answered)."""
        target = self.target
        if self.busy:
            self.busy = False
            target[1] -= 1
        answered = self.counts.publications + self.counts.errors
        if answered >= target[0]:
            self.finished.set()
        if answered + target[1] < target[0]:  # no more in flight than the target still needs
            self.busy = True
            target[1] += 1
            super().send()


async def subscriber(port: int, ready: asyncio.Event, received: list[int]) -> None:
    token = jwt.encode({"sub": "probe"}, SECRET, algorithm="HS256")
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/connection/websocket") as ws:
        await ws.send_str(json.dumps({"id": 1, "connect": {"token": token}}) + "\n"
                          + json.dumps({"id": 2, "subscribe": {"channel": "bench0"}}))
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            if '"id":2' in msg.data:
                ready.set()
            received[0] += msg.data.count('"pub"')


async def workload(engine: dict[str, Any], warmup: int, requests: int, connections: int, mode: str) -> None:
    from loadtest.fanout_instructions import toggles  # noqa: PLC0415
    from node.config_load import load  # noqa: PLC0415
    from node.server import serve  # noqa: PLC0415
    from tests.redis_servers import free_port  # noqa: PLC0415

    measure = toggles()
    port = free_port()
    config: dict[str, Any] = {
        "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["*"]},
        "http_api": {"key": bench.API_KEY}, "log": {"level": "error"},
        "http_server": {"port": port, "address": "127.0.0.1"},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True, "history_size": 100,
                                          "history_ttl": "300s"},
                    "namespaces": [{"name": "maps", "subscription_type": "map",
                                    "map": {"mode": "persistent", "stream_size": 1000, "stream_ttl": "5m"}}]},
        **engine}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    stop = asyncio.Event()
    server = asyncio.create_task(serve(load(f.name, {}, {}).config, stop))
    loop = asyncio.get_running_loop()
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    ready, received = asyncio.Event(), [0]
    sub = asyncio.create_task(subscriber(port, ready, received))
    await asyncio.wait_for(ready.wait(), 20)
    counts, finished = Counts(), asyncio.Event()
    target = [0, 0]  # requests to have answered in all, requests in flight
    callers = []
    for n in range(connections):
        caller = Measured(counts, n * 7, target, finished, mode)
        await loop.create_connection(lambda c=caller: c, "127.0.0.1", port)  # type: ignore[misc]
        callers.append(caller)

    async def run(count: int) -> None:
        target[0] += count
        finished.clear()
        for caller in callers:
            caller.send()
        await asyncio.wait_for(finished.wait(), 600)

    await run(warmup)
    measure.measure_start()
    started = loop.time()
    if os.environ.get("IDLE_SECONDS"):  # what the server does on its own in that time (timers, pings)
        await asyncio.sleep(float(os.environ["IDLE_SECONDS"]))
    else:
        await run(requests)
    elapsed = loop.time() - started
    measure.measure_stop()
    print(f"node from {sys.modules['node'].__file__}: {requests} requests, {counts.errors} errors, "
          f"{received[0]} deliveries to the subscriber in {elapsed:.1f}s ({counts.publications} answered in all)",
          file=sys.stderr)
    for caller in callers:
        assert caller.transport is not None
        caller.transport.close()
    sub.cancel()
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server, 10)
    if counts.errors:
        raise SystemExit(f"{counts.errors} requests failed")


def callgrind(tree: Path, engine: str, url: str, warmup: int, requests: int, connections: int, mode: str) -> int:
    from loadtest.fanout_instructions import counted  # noqa: PLC0415 (the measuring process only)

    args = ["--inner", engine, "--url", url, "--warmup", str(warmup), "--requests", str(requests),
            "--connections", str(connections), "--mode", mode]
    return counted(__file__, args, tree, also=ROOT, keep_as=f"callgrind.{mode}.{engine}.{tree.name}")


def engine_config(engine: str, url: str) -> dict[str, Any]:
    if engine == "memory":
        return {}
    if engine == "redis_map":
        return {"map_broker": {"type": "redis", "redis": {"address": url}}}
    return {"engine": {"type": "redis", "redis": {"address": [url]}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", help="checkout(s) to measure (default: this one)")
    parser.add_argument("--mode", choices=["publish", "map"], default="publish")
    parser.add_argument("--engines", nargs="+", default=["memory", "redis", "redis_cluster"])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        asyncio.run(workload(engine_config(args.inner, args.url), args.warmup, args.requests, args.connections,
                             args.mode))
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.redis_servers import RedisCluster, RedisStandalone, free_port  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="fugato-pubinstr-") as tmp, contextlib.ExitStack() as stack:
        urls = {"memory": ""}
        if "redis" in args.engines or "redis_map" in args.engines:
            urls["redis"] = urls["redis_map"] = stack.enter_context(RedisStandalone(Path(tmp) / "standalone")).url
        if "redis_cluster" in args.engines:
            ports: list[int] = []
            for _ in range(3):
                ports.append(free_port(ports))
            cluster = RedisCluster(Path(tmp) / "cluster", ports=ports, replicas=0).start()
            stack.callback(cluster.stop)
            urls["redis_cluster"] = cluster.url
        for engine in args.engines:
            for tree in args.tree or [ROOT]:
                count = callgrind(tree.resolve(), engine, urls[engine], args.warmup, args.requests, args.connections,
                                  args.mode)
                print(f"{tree}: {args.mode}: {engine}: {count / args.requests:.0f} instructions per request "
                      f"({count} over {args.requests})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
