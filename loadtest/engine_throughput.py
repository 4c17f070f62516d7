"""Engine throughput: how much of one Redis a Fugato worker uses, measured against the Redis itself.

    python -m loadtest.engine_throughput [--duration 5] [--rounds 2] [--engines memory,redis,redis_cluster]
                                         [--before DIR]

In one run it starts its own Redis (standalone, and a 3-master Redis Cluster) on free ports and measures:

* the ceiling: ``redis-benchmark`` running EVALSHA of the engine's own ``publish.lua`` (history size 100,
  pipelined 32 deep on 16 connections) against the standalone Redis;
* for each engine (memory, one Redis, Redis Cluster), a single Fugato worker (pinned to the first CPU, the
  load generator to the others) publishing to 100 channels with history 100:
  ``batch``: ``/api/batch`` with 100 publishes per request from 16 connections;
  ``single``: many concurrent callers (64 connections) of ``/api/publish``, one publication per request.

Each figure is publications per wall second and as a ratio of the ceiling, with the server CPU per publication
and the publication → delivery latency seen by a WebSocket subscriber of one channel (p50/p99). The modes run
alternately, ``--rounds`` times, with the ceiling measured again before each round; the summary takes each
figure's median over the rounds. On a shared machine absolute numbers drift: compare the ratios.

Last, the workers' CPU efficiency (``loadtest.workers_efficiency``, options ``--workers-*``; ``--workers-rounds
0`` skips it): deliveries per server CPU-second with 2 workers under the supervisor over 1 worker's, on the
standalone Redis, for this checkout and, with ``--before``, for the older one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson

from loadtest import workers_efficiency
from loadtest.bench import API_KEY, SECRET, Spawned, cpu_seconds, raise_fd_limit

CHANNELS = 100
HISTORY = {"history_size": 100, "history_ttl": "300s"}
PAD = b"x" * 80
PROBE = "bench0"  # the channel the latency subscriber listens to (1 in CHANNELS publications)


# --- the ceiling ----------------------------------------------------------------------------------------


def redis_ceiling(port: int, pid: int, requests: int) -> tuple[float, float]:
    """EVALSHA of publish.lua from redis-benchmark (16 connections, pipeline 32): per second, and per CPU-second
    of the redis-server process (what one Redis core does, whatever else the machine is busy with)."""
    lua = (Path(__file__).resolve().parent.parent / "node" / "broker" / "lua" / "publish.lua").read_text()
    sha = subprocess.run(["redis-cli", "-p", str(port), "SCRIPT", "LOAD", lua], capture_output=True, text=True,
                         check=True, timeout=10).stdout.strip()
    body = "x" * 100  # about the size of a msgpack publication body with the bench's payload
    # One channel: redis-benchmark draws each __rand_int__ on its own, and a stream and its meta key must agree.
    cmd = ["redis-benchmark", "-p", str(port), "-c", "16", "-P", "32", "-n", str(requests), "--csv",
           "EVALSHA", sha, "3", "b.stream.{ch}", "b.meta.{ch}", "b.result.{ch}", "b.client.{ch}", "100", "300",
           "2592000", "abcdefgh", "publish", "0", "0", body]  # the arguments as node/broker/redis.py sends them
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    cpu = cpu_seconds(pid) - cpu0
    rows = list(csv.reader(io.StringIO(out)))
    return float(rows[-1][1]), requests / cpu if cpu > 0 else float("nan")


# --- the load generator -----------------------------------------------------------------------------------


@dataclass
class Counts:
    publications: int = 0
    errors: int = 0
    latencies: list[int] = field(default_factory=list)  # ns, publication → delivery at the probe subscriber


def single_request(i: int) -> tuple[bytes, int]:
    body = b'{"channel":"bench%d","data":{"t":%d,"p":"%s"}}' % (i % CHANNELS, time.time_ns(), PAD)
    return body, 1


def batch_request(i: int, size: int) -> tuple[bytes, int]:
    t = time.time_ns()
    # The probe channel's item moves through the positions of the batch from request to request (37 is prime to
    # CHANNELS), so the latency sampled is that of any item, not of the first one of each batch.
    items = [b'{"publish":{"channel":"bench%d","data":{"t":%d,"p":"%s"}}}' % ((i * 37 + j) % CHANNELS, t, PAD)
             for j in range(size)]
    return b'{"commands":[' + b",".join(items) + b"]}", size


class Caller(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends its next request as soon as the previous reply is in:
    a request is one write, a reply is counted from its head and Content-Length (no HTTP library)."""

    def __init__(self, path: bytes, make: Callable[[int], tuple[bytes, int]], counts: Counts, offset: int,
                 done: asyncio.Future[None]) -> None:
        self.head = b"POST %s HTTP/1.1\r\nHost: bench\r\nX-API-Key: %s\r\nContent-Length: " % (path, API_KEY.encode())
        self.make, self.counts, self.i, self.done = make, counts, offset, done
        self.buf = b""
        self.in_flight = 0
        self.running = True
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        body, self.in_flight = self.make(self.i)
        self.i += 1
        assert self.transport is not None
        self.transport.write(self.head + b"%d\r\n\r\n" % len(body) + body)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end]
        at = head.lower().find(b"content-length:")
        length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4:end + 4 + length]
        self.buf = self.buf[end + 4 + length:]
        errors = body.count(b'"error"') if head.startswith(b"HTTP/1.1 200") else self.in_flight
        self.counts.errors += errors
        self.counts.publications += self.in_flight - errors
        if self.running:
            self.send()
        elif not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def probe(port: int, counts: Counts, ready: asyncio.Event, stop: asyncio.Event) -> None:
    """A WebSocket subscriber of PROBE recording how long each publication took to arrive."""
    token = jwt.encode({"sub": "probe"}, SECRET, algorithm="HS256")
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/connection/websocket") as ws:
        connect = orjson.dumps({"id": 1, "connect": {"token": token}})
        subscribe = orjson.dumps({"id": 2, "subscribe": {"channel": PROBE}})
        await ws.send_str((connect + b"\n" + subscribe).decode())
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.receive(), 0.5)
            except TimeoutError:
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.time_ns()
            for line in msg.data.split("\n"):
                frame = orjson.loads(line)
                if frame.get("id") == 2:
                    ready.set()
                pub = frame.get("push", {}).get("pub")
                if pub is not None:
                    counts.latencies.append(now - pub["data"]["t"])


async def drive(port: int, mode: str, duration: float, batch_size: int, connections: int) -> Counts:
    counts = Counts()
    loop = asyncio.get_running_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    subscriber = asyncio.create_task(probe(port, counts, ready, stop))
    await asyncio.wait_for(ready.wait(), 10)
    if mode == "batch":
        path, make = b"/api/batch", (lambda i: batch_request(i, batch_size))
    else:
        path, make = b"/api/publish", single_request
    callers: list[Caller] = []
    for n in range(connections):
        caller = Caller(path, make, counts, n * 7, loop.create_future())
        await loop.create_connection(lambda c=caller: c, "127.0.0.1", port)  # type: ignore[misc]
        callers.append(caller)
    started = time.monotonic()
    await asyncio.sleep(duration)
    for caller in callers:
        caller.running = False
    elapsed = time.monotonic() - started
    await asyncio.wait([c.done for c in callers], timeout=10)
    for caller in callers:
        if caller.transport is not None:
            caller.transport.close()
    stop.set()
    await subscriber
    counts.latencies = [lat for lat in counts.latencies if lat > 0]
    counts.publications = int(counts.publications * duration / max(elapsed, duration))
    return counts


# --- one run ----------------------------------------------------------------------------------------------


def percentile(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6


async def measure(server: Spawned, mode: str, args: argparse.Namespace) -> dict[str, float]:
    cpu0 = cpu_seconds(server.proc.pid)
    started = time.monotonic()
    conns = args.batch_connections if mode == "batch" else args.single_connections
    counts = await drive(server.port, mode, args.duration, args.batch_size, conns)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(server.proc.pid) - cpu0
    return {"pubs_per_s": counts.publications / args.duration, "errors": counts.errors,
            "cpu_us_per_pub": cpu / max(counts.publications, 1) * 1e6 * (args.duration / elapsed),
            "p50_ms": percentile(counts.latencies, 50), "p99_ms": percentile(counts.latencies, 99)}


def start_servers(workdir: Path, engines: list[str],
                  stack: contextlib.ExitStack) -> tuple[dict[str, str], tuple[int, int]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from redis_servers import RedisCluster, RedisStandalone, ensure_redis_installed, free_port  # noqa: PLC0415

    ensure_redis_installed()
    standalone = stack.enter_context(RedisStandalone(workdir / "standalone"))
    urls = {"memory": "", "redis": standalone.url}
    if "redis_cluster" in engines:
        ports: list[int] = []
        for _ in range(3):
            ports.append(free_port(ports))
        cluster = RedisCluster(workdir / "cluster", ports=ports, replicas=0).start()
        stack.callback(cluster.stop)
        urls["redis_cluster"] = cluster.url
    return urls, (standalone.port, standalone.pid or 0)


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    engines = args.engines.split(",")
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fugato-engine-")))
        urls, (redis_port, redis_pid) = start_servers(workdir, engines, stack)
        cpus = sorted(os.sched_getaffinity(0))
        servers: dict[str, Spawned] = {}
        labels = [*engines, *(f"{e}@before" for e in engines if args.before)]
        for label in labels:
            engine = label.split("@")[0]
            server = Spawned("fugato", redis_url=urls[engine], channel=HISTORY,
                             source=args.before if label.endswith("@before") else "")
            stack.callback(server.stop)
            await server.wait_ready()
            if len(cpus) > 1:
                os.sched_setaffinity(server.proc.pid, {cpus[0]})
            servers[label] = server
        for r in range(args.rounds):
            ceiling, ceiling_cpu = await asyncio.to_thread(redis_ceiling, redis_port, redis_pid,
                                                           args.ceiling_requests)
            if len(cpus) > 1:
                os.sched_setaffinity(0, set(cpus[1:]))  # the load generator stays off the servers' CPU
            result: dict[str, Any] = {"ceiling": ceiling, "ceiling_cpu": ceiling_cpu}
            print(f"round {r + 1}: ceiling (redis-benchmark EVALSHA publish.lua) {ceiling:,.0f}/s, "
                  f"{ceiling_cpu:,.0f} per redis-server CPU-second", flush=True)
            for mode in ("batch", "single"):
                for engine in labels:
                    figures = await measure(servers[engine], mode, args)
                    result[f"{engine}/{mode}"] = figures
                    print(f"  {engine:21s} {mode:6s} {figures['pubs_per_s']:10,.0f} pubs/s "
                          f"{figures['pubs_per_s'] / ceiling:5.2f}x ceiling  "
                          f"{figures['cpu_us_per_pub']:6.1f} us server CPU/pub  p50 {figures['p50_ms']:.1f} ms  "
                          f"p99 {figures['p99_ms']:.1f} ms  errors {figures['errors']}", flush=True)
            os.sched_setaffinity(0, set(cpus))
            rounds.append(result)
        for server in servers.values():
            server.stop()  # idle, but the workers measurement has the CPUs to itself
        workers: dict[str, dict[str, Any]] = {}
        if args.workers_rounds > 0:
            for label, source in [("", ""), *([("@before", args.before)] if args.before else [])]:
                print(f"workers{label}: 1 vs 2 workers, {args.workers_subscribers} subscribers of one channel, "
                      f"{args.workers_rate:.0f} publications/s", flush=True)
                try:
                    workers[label] = await workers_efficiency.run(workers_efficiency.options(args, "workers-"),
                                                                  redis_url=urls["redis"], source=source)
                except RuntimeError as e:  # an older tree that cannot run workers: the other figures still count
                    print(f"workers{label}: not measured ({e})", flush=True)
    summarize(rounds, labels)
    for label, figures in workers.items():
        workers_efficiency.report(figures, label)
    lost = sum(figures["lost"] for figures in workers.values())
    return 0 if lost == 0 and all(v["errors"] == 0 for r in rounds for v in r.values() if isinstance(v, dict)) else 1


def summarize(rounds: list[dict[str, Any]], labels: list[str]) -> None:
    """The median of each figure over the rounds, with two ratios to the ceiling: publications per wall second
    over EVALSHA per second (the issue's measure; on a shared machine both drop with the processes' share of
    the CPUs), and publications per Fugato CPU-second over EVALSHA per redis-server CPU-second (one core
    against one core: what the ratio would be with a core each, whatever else runs on the machine)."""
    def med(key: str, figure: str) -> float:
        return statistics.median(r[key][figure] for r in rounds)

    def ratio(key: str, per_cpu: bool = False) -> float:
        if per_cpu:
            return statistics.median(1e6 / r[key]["cpu_us_per_pub"] / r["ceiling_cpu"] for r in rounds)
        return statistics.median(r[key]["pubs_per_s"] / r["ceiling"] for r in rounds)

    ceiling = statistics.median(r["ceiling"] for r in rounds)
    ceiling_cpu = statistics.median(r["ceiling_cpu"] for r in rounds)
    print(f"\nmedian of {len(rounds)} round(s); ceiling (redis-benchmark, EVALSHA of publish.lua) {ceiling:,.0f}/s, "
          f"{ceiling_cpu:,.0f} per redis-server CPU-second. 'x ceiling' after pubs/s divides by the first, after "
          "pubs/CPU-s (the server's) by the second")
    print(f"{'engine':21s} {'mode':6s} {'pubs/s':>9s} {'x ceiling':>9s} {'us CPU/pub':>10s} {'pubs/CPU-s':>10s} "
          f"{'x ceiling':>9s} {'p50 ms':>7s} {'p99 ms':>7s}")
    for mode in ("batch", "single"):
        for label in labels:
            key = f"{label}/{mode}"
            cpu_us = med(key, "cpu_us_per_pub")
            print(f"{label:21s} {mode:6s} {med(key, 'pubs_per_s'):9,.0f} {ratio(key):9.2f} {cpu_us:10.1f} "
                  f"{1e6 / cpu_us:10,.0f} {ratio(key, True):9.2f} {med(key, 'p50_ms'):7.1f} {med(key, 'p99_ms'):7.1f}")
    for mode in ("batch", "single"):
        if "redis" in labels and "redis_cluster" in labels:
            cluster = statistics.median(r[f"redis_cluster/{mode}"]["pubs_per_s"] / r[f"redis/{mode}"]["pubs_per_s"]
                                        for r in rounds)
            print(f"redis_cluster / redis ({mode}): {cluster:.2f} pubs/s")
        for label in labels:
            if f"{label}@before" in labels:
                now, before = f"{label}/{mode}", f"{label}@before/{mode}"
                gain = statistics.median(r[now]["pubs_per_s"] / r[before]["pubs_per_s"] for r in rounds)
                cpu = statistics.median(r[before]["cpu_us_per_pub"] / r[now]["cpu_us_per_pub"] for r in rounds)
                print(f"{label} now / before ({mode}): {gain:.2f}x pubs/s, {cpu:.2f}x pubs per server CPU-second")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the summary is their median")
    parser.add_argument("--engines", default="memory,redis,redis_cluster")
    parser.add_argument("--batch-size", type=int, default=100, help="publishes per /api/batch request")
    parser.add_argument("--batch-connections", type=int, default=16)
    parser.add_argument("--single-connections", type=int, default=64)
    parser.add_argument("--before", default="", metavar="DIR",
                        help="also run each engine's server from this checkout of Fugato (an older version), "
                             "alternately with the current one, for a before/after table from one run")
    parser.add_argument("--ceiling-requests", type=int, default=300000, help="EVALSHA calls of redis-benchmark")
    workers_efficiency.add_arguments(parser, "workers-")  # --workers-rounds 0 skips the workers measurement
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
