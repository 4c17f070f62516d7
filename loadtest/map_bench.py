"""Map subscriptions against stream subscriptions, in one run on one spawned server (memory engine).

    python -m loadtest.map_bench [--subscribers N] [--publishers P] [--keys K] [--duration S] [--rounds R]
                                 [--map-broker memory|redis|postgres] [--redis-url U] [--postgres-dsn D]

Each round runs two fan-outs, one after the other, to N subscribers of one channel: a stream channel fed by
``/api/publish``, and a map channel (persistent mode) fed by ``/api/map_publish`` over K keys, whose
subscribers went through the map phases (a STATE page, then STREAM to LIVE). Prints, per kind, the median of
deliveries per server CPU-second and per wall second over the rounds, publish→receive p50/p99, lost messages,
and map / stream as a ratio: the cost of a map update's delivery next to a stream publication's. With
``--map-broker`` the map channel lives in that map broker (``map_broker.redis`` / ``map_broker.postgres``, under
a fresh prefix); publications per server CPU-second then tell what a map update costs the node with each
backend (the backend's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from typing import Any

import psycopg

from loadtest.bench import (
    PAYLOAD_PAD,
    RawHttp,
    Spawned,
    Swarm,
    Target,
    cpu_split,
    drain,
    percentile,
    pin_cpus,
    raise_fd_limit,
    report,
)

NAMESPACES: dict[str, Any] = {"channel": {
    "without_namespace": {"allow_subscribe_for_client": True},
    "namespaces": [{"name": "maps", "subscription_type": "map", "allow_subscribe_for_client": True,
                    "map": {"mode": "persistent", "stream_size": 1000, "stream_ttl": "5m"}}],
}}


async def publish(target: Target, kind: str, channel: str, publishers: int, keys: int, duration: float) -> int:
    """Publish as fast as the server answers for ``duration`` seconds; returns how many were published."""
    headers = {"X-API-Key": target.api_key, "Content-Type": "application/json"}
    path = "/api/map_publish" if kind == "map" else "/api/publish"
    names = itertools.cycle([f"k{i}" for i in range(keys)])
    stop_at = time.monotonic() + duration
    sent = 0

    async def one() -> None:
        nonlocal sent
        http = RawHttp(target.host, target.port, headers)
        try:
            while time.monotonic() < stop_at:
                body: dict[str, Any] = {"channel": channel, "data": {"t": time.time_ns(), "p": PAYLOAD_PAD}}
                if kind == "map":
                    body["key"] = next(names)
                if (status := await http.post(path, json.dumps(body, separators=(",", ":")).encode())) != 200:
                    raise RuntimeError(f"{path} failed: HTTP {status}")
                sent += 1
        finally:
            http.close()

    await asyncio.gather(*(one() for _ in range(publishers)))
    return sent


async def fanout(target: Target, kind: str, args: argparse.Namespace, round_no: int) -> dict[str, Any]:
    channel = f"maps:m{round_no}" if kind == "map" else f"stream{round_no}"
    swarm = Swarm(target, args.subscribers, [channel], args.lazy_ms, map_sub=kind == "map")
    try:
        await swarm.start()
        await swarm.reset()
        (user0, sys0), t0 = cpu_split(target.pid), time.monotonic()
        sent = await publish(target, kind, channel, args.publishers, args.keys, args.duration)
        expected = sent * args.subscribers
        got = await drain(swarm, expected, 10)
        elapsed = time.monotonic() - t0
        user1, sys1 = cpu_split(target.pid)
    finally:
        swarm.stop()
    cpu = (user1 - user0) + (sys1 - sys0)
    delivered = got["messages"]
    return {"publications": sent, "publications_per_server_cpu_s": sent / cpu if cpu else 0.0,
            "deliveries": delivered, "lost": expected - delivered,
            "deliveries_per_s": delivered / elapsed, "deliveries_per_server_cpu_s": delivered / cpu if cpu else 0.0,
            "p50_ms": percentile(got["samples"], 50), "p99_ms": percentile(got["samples"], 99)}


PREFIX = f"bench{os.getpid()}"


def map_broker(args: argparse.Namespace) -> dict[str, Any]:
    prefix = PREFIX
    if args.map_broker == "redis":
        return {"map_broker": {"type": "redis", "redis": {"address": args.redis_url, "prefix": prefix}}}
    if args.map_broker == "postgres":
        return {"map_broker": {"type": "postgres", "postgres": {"dsn": args.postgres_dsn, "table_prefix": prefix}}}
    return {}


def drop_tables(dsn: str) -> None:
    """The run's map broker tables and functions go (they are named after this process)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT 'TABLE', tablename FROM pg_tables WHERE tablename LIKE %s UNION ALL "
                             "SELECT DISTINCT 'FUNCTION', proname FROM pg_proc WHERE proname LIKE %s",
                             (PREFIX + "_map_%", PREFIX + "_map_%")).fetchall()
        for kind, name in found:
            conn.execute(f"DROP {kind} IF EXISTS {name} CASCADE".encode())


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit()
    all_cpus = os.sched_getaffinity(0)
    spawned = Spawned("fugato", engine={**NAMESPACES, **map_broker(args)})
    results: dict[str, list[dict[str, Any]]] = {"stream": [], "map": []}
    try:
        await spawned.wait_ready()
        print(pin_cpus(spawned.proc.pid))
        target = Target("fugato", "127.0.0.1", spawned.port, spawned.proc.pid)
        for round_no in range(args.rounds):
            for kind in ("stream", "map"):  # alternately, so both see the same machine
                results[kind].append(await fanout(target, kind, args, round_no))
    finally:
        spawned.stop()
        os.sched_setaffinity(0, all_cpus)
        if args.map_broker == "postgres":
            drop_tables(args.postgres_dsn)
    medians: dict[str, dict[str, Any]] = {}
    for kind, runs in results.items():
        medians[kind] = {key: statistics.median(r[key] for r in runs) if isinstance(runs[0][key], float)
                         else sum(r[key] for r in runs) for key in runs[0]}
        report(f"{kind} (map broker {args.map_broker}): {args.subscribers} subscribers, {args.publishers} "
               f"publishers, {args.duration}s x "
               f"{args.rounds} rounds (medians; counts summed)", medians[kind])
    ratio = medians["map"]["deliveries_per_server_cpu_s"] / medians["stream"]["deliveries_per_server_cpu_s"]
    print(f"map / stream deliveries per server CPU-second: {ratio:.2f}")
    return 0 if all(m["lost"] == 0 for m in medians.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--keys", type=int, default=100, help="map keys the publishers cycle through")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of publishing per fan-out")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lazy-ms", type=float, default=1.0)
    parser.add_argument("--map-broker", choices=("memory", "redis", "postgres"), default="memory")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
