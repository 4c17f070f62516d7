"""Shared poll: backend calls per refresh interval against the number of subscribers, and update deliveries per
server CPU-second, on one spawned server (memory engine).

    python -m loadtest.sharedpoll_bench [--subscribers N,N,...] [--keys U] [--per-client K] [--interval MS]
                                        [--duration S] [--batch B]

For each subscriber count: N WebSocket clients (JSON, in this process) subscribe to one shared poll channel and
each track K of U keys (signed as the application would). The refresh backend (aiohttp, in this process)
answers every call with new data for every key it is asked for, so every tracked key changes every interval.
Prints, per run: refresh calls per interval (one call per ``--batch`` keys, whatever N), keys per call,
update deliveries, deliveries per server CPU-second and per wall second. Exit 1 if a client missed a cycle's
update entirely (got fewer updates than intervals - 2 for a key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from loadtest.bench import Spawned, Target, cpu_split, free_port, pin_cpus, raise_fd_limit, report
from node.sharedpoll.signature import sign

HMAC_KEY = "bench-shared-poll-secret"


class Backend:
    """The application: answers refresh calls (new data for every key asked) and counts them."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls = 0
        self.items = 0
        self.cycle = 0
        self._runner: web.AppRunner | None = None

    async def refresh(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls += 1
        self.items += len(body["items"])
        self.cycle += 1
        items = [{"key": it["key"], "data": {"k": it["key"], "n": self.cycle}} for it in body["items"]]
        return web.json_response({"result": {"items": items}})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/refresh", self.refresh)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def server_config(backend: Backend, interval_ms: int, batch: int) -> dict[str, Any]:
    return {
        "shared_poll": {"hmac_secret_key": HMAC_KEY},
        "channel": {
            "proxy": {"shared_poll_refresh": {"endpoint": f"http://127.0.0.1:{backend.port}/refresh",
                                              "timeout": "5s"}},
            "namespaces": [{"name": "votes", "subscription_type": "shared_poll", "allow_subscribe_for_client": True,
                            "shared_poll": {"refresh_interval": f"{interval_ms}ms", "refresh_batch_size": batch,
                                            "max_keys_per_connection": 100000}}],
        },
    }


async def subscriber(session: aiohttp.ClientSession, target: Target, i: int, channel: str, keys: list[str],
                     counts: dict[str, int], ready: asyncio.Event, stop: asyncio.Event) -> None:
    user = f"u{i}"
    token = jwt.encode({"sub": user}, target.secret, algorithm="HS256")
    signature = sign(HMAC_KEY, user, channel, keys, int(time.time()), 0)
    async with session.ws_connect(f"ws://{target.host}:{target.port}/connection/websocket") as ws:
        await ws.send_str(json.dumps({"id": 1, "connect": {"token": token}}) + "\n"
                          + json.dumps({"id": 2, "subscribe": {"channel": channel, "type": 4}}) + "\n"
                          + json.dumps({"id": 3, "sub_refresh": {"channel": channel, "type": 1, "track": [
                              {"signature": signature, "items": [{"key": k} for k in keys]}]}}))
        tracked = False
        while not stop.is_set():
            try:
                msg = await ws.receive(timeout=0.5)
            except TimeoutError:
                continue
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            for line in msg.data.split("\n"):
                if not line:
                    continue
                reply = json.loads(line)
                if not reply:
                    await ws.send_str("{}")  # the server's ping: pong
                    continue
                if reply.get("id") == 3:
                    if "error" in reply:
                        raise RuntimeError(f"track failed: {reply['error']}")
                    tracked = True
                    ready.set()
                pub = reply.get("push", {}).get("pub")
                if pub is not None:
                    counts[pub["key"]] = counts.get(pub["key"], 0) + 1
        if not tracked:
            raise RuntimeError("never tracked")


async def run(n: int, args: argparse.Namespace) -> dict[str, Any]:
    backend = Backend()
    await backend.start()
    spawned = Spawned("fugato", engine=server_config(backend, args.interval, args.batch))
    try:
        await spawned.wait_ready()
        print(pin_cpus(spawned.proc.pid))
        target = Target("fugato", "127.0.0.1", spawned.port, spawned.proc.pid)
        channel = "votes:bench"
        keys = [f"k{i}" for i in range(args.keys)]
        per_client = [[keys[(i * args.per_client + j) % args.keys] for j in range(args.per_client)]
                      for i in range(n)]
        counts: list[dict[str, int]] = [{} for _ in range(n)]
        stop = asyncio.Event()
        readies = [asyncio.Event() for _ in range(n)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = [asyncio.create_task(subscriber(session, target, i, channel, per_client[i], counts[i],
                                                    readies[i], stop)) for i in range(n)]
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
            await asyncio.sleep(args.interval / 1000 * 2)  # the cold polls are over: measure steady cycles
            for c in counts:
                c.clear()
            calls0, items0 = backend.calls, backend.items
            (user0, sys0), t0 = cpu_split(target.pid), time.monotonic()
            await asyncio.sleep(args.duration)
            (user1, sys1), elapsed = cpu_split(target.pid), time.monotonic() - t0
            calls, items = backend.calls - calls0, backend.items - items0
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        spawned.stop()
        await backend.stop()
    cpu = (user1 - user0) + (sys1 - sys0)
    intervals = elapsed / (args.interval / 1000)
    delivered = sum(sum(c.values()) for c in counts)
    fewest = min(min(c.get(k, 0) for k in per_client[i]) for i, c in enumerate(counts))
    return {"subscribers": n, "unique_keys": args.keys, "intervals": intervals,
            "refresh_calls_per_interval": calls / intervals, "keys_per_call": items / calls if calls else 0.0,
            "deliveries": delivered, "deliveries_per_s": delivered / elapsed,
            "deliveries_per_server_cpu_s": delivered / cpu if cpu else 0.0, "server_cpu_s": cpu,
            "fewest_updates_of_a_key": fewest}


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit()
    all_cpus = os.sched_getaffinity(0)
    results = []
    try:
        for n in args.subscribers:
            os.sched_setaffinity(0, all_cpus)  # each run pins its own server
            result = await run(n, args)
            report(f"shared poll: {n} subscribers x {args.per_client} of {args.keys} keys, refresh every "
                   f"{args.interval}ms, batches of {args.batch}, {args.duration}s", result)
            results.append(result)
    finally:
        os.sched_setaffinity(0, all_cpus)
    calls = [r["refresh_calls_per_interval"] for r in results]
    print("refresh calls per interval by subscribers: " + ", ".join(
        f"{r['subscribers']}: {c:.2f}" for r, c in zip(results, calls, strict=True)))
    steady = args.duration / (args.interval / 1000) - 2
    return 0 if all(r["fewest_updates_of_a_key"] >= steady for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=lambda s: [int(x) for x in s.split(",")], default=[50, 500])
    parser.add_argument("--keys", type=int, default=200, help="unique keys")
    parser.add_argument("--per-client", type=int, default=20, help="keys each subscriber tracks")
    parser.add_argument("--interval", type=int, default=500, help="refresh_interval, ms")
    parser.add_argument("--batch", type=int, default=1000, help="refresh_batch_size")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
