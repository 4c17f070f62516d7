"""Workers, the CPU-efficiency form of scaling: deliveries per server CPU-second with 2 workers over 1 worker's.

    python -m loadtest.workers_efficiency [--rate 25] [--subscribers 1000] [--duration 10] [--rounds 3]

One private Redis (the engine) and two servers, one with a single worker and one with 2 workers under the
supervisor, both kept running. Each measurement gives both the same load shape: ``--subscribers`` WebSocket
subscribers of one channel (spread over the workers by SO_REUSEPORT) and ``--publishers`` HTTP publishers at a
fixed total ``--rate``, their starts staggered so that publications arrive evenly. Every worker is pinned to
the first CPU and the load generator to the others, as one worker alone would be. A warm-up is published and
drained first; then the CPU-seconds of every worker process (from /proc, supervisord excluded) are taken over
the measured publishing and its drain. The two configurations alternate over ``--rounds`` (1, 2, then 2, 1,
...), and the result is the median of the per-round ratios.

Why this rate and shape: what is compared is the cost of a delivery, so both configurations must write the
same number of messages per ``send()``. A delivery written alone costs several times one coalesced with
others, and how many a write carries depends on the load's timing, not on what a worker costs: a process's
flush round writes to its clients back to back, and what is published meanwhile joins the next round. Counted
with ``perf stat`` on the workers (sendto calls against deliveries): at 200 publications/s from 16 publishers
started together, one worker wrote 15-21 messages per ``send()`` and two wrote 10-11. One process reads the
whole burst of 16 requests in one loop iteration and fans it out in one round; with two, each worker gets its
half of the burst by HTTP and the other half back from Redis later (the two share one core here), so each
burst takes two rounds. The cost per ``send()`` was the same (22-27 us of worker CPU in both), and epoll waits and
context switches stayed at a few per 1,000 deliveries in both, so that 0.65-0.77x was fewer messages per
write, i.e. load shape. At 25/s,
evenly spaced, a round ends before the next publication in both configurations (1.6 and 1.5 messages per
write) and the ratio measures what workers add per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.bench import Spawned, Target, cpu_split, drain, make_swarm, publish_loop, raise_fd_limit, start_redis

WORKERS = (1, 2)


def switches(pids: list[int]) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of the processes so far, from /proc: a process preempted in
    the middle of its writes shows as involuntary ones."""
    vol = invol = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return vol, invol


async def measure(server: Spawned, pids: list[int], args: argparse.Namespace) -> dict[str, float]:
    """One measurement: subscribers connect, a warm-up is published and drained, then the measured part."""
    target = Target("fugato", "127.0.0.1", server.port, pids)
    swarm = make_swarm(args, target, args.subscribers, ["bench0"], args.lazy_ms)
    try:
        await swarm.start()
        sent = await publish_loop(target, ["bench0"], args.publishers, args.rate, args.warmup, stagger=True)
        await drain(swarm, sent * args.subscribers, 15.0)
        await swarm.reset()
        user0, sys0 = cpu_split(pids)
        switches0 = switches(pids)
        started = time.monotonic()
        sent = await publish_loop(target, ["bench0"], args.publishers, args.rate, args.duration, stagger=True)
        got = int((await drain(swarm, sent * args.subscribers, 15.0))["messages"])
        elapsed = time.monotonic() - started
        user1, sys1 = cpu_split(pids)
        switches1 = switches(pids)
    finally:
        swarm.stop()
    cpu = (user1 - user0) + (sys1 - sys0)
    return {"deliveries": got, "lost": sent * args.subscribers - got, "deliveries_per_s": got / elapsed,
            "server_cpu_s": cpu, "user_share": (user1 - user0) / cpu if cpu else float("nan"),
            "deliveries_per_cpu_s": got / cpu if cpu else float("nan"),
            "user_us": (user1 - user0) / max(got, 1) * 1e6, "system_us": (sys1 - sys0) / max(got, 1) * 1e6,
            "switches_per_pub": (switches1[0] - switches0[0]) / max(sent, 1),
            "preempted_per_pub": (switches1[1] - switches0[1]) / max(sent, 1)}


async def run(args: argparse.Namespace, redis_url: str = "", source: str = "") -> dict[str, Any]:
    """Measure; ``redis_url``: an engine Redis to use (else a private one is started); ``source``: run the
    servers from that checkout of Fugato. Returns the figures, with ``efficiency``: the median over rounds of
    2 workers' deliveries per CPU-second over 1 worker's."""
    raise_fd_limit()
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="fugato-workers-") as workdir:
        redis = None if redis_url else start_redis(workdir)
        servers: dict[int, tuple[Spawned, list[int]]] = {}
        try:
            url = redis_url or redis.url
            for w in WORKERS:
                server = Spawned("fugato", redis_url=url, workers=w, source=source)
                servers[w] = (server, [])
                await server.wait_ready()
                pids = server.server_pids()
                servers[w] = (server, [pids] if isinstance(pids, int) else pids)
                if len(cpus) > 1 and not args.no_pin:
                    for pid in servers[w][1]:
                        os.sched_setaffinity(pid, {cpus[0]})
            if len(cpus) > 1 and not args.no_pin:
                os.sched_setaffinity(0, set(cpus[1:]))  # the publishers and (inherited) the swarm
            rounds: list[dict[int, dict[str, float]]] = []
            for r in range(args.rounds):
                result: dict[int, dict[str, float]] = {}
                for w in (WORKERS if r % 2 == 0 else WORKERS[::-1]):
                    result[w] = await measure(servers[w][0], servers[w][1], args)
                    f = result[w]
                    print(f"  round {r + 1}, {w} worker(s): {f['deliveries_per_s']:,.0f} deliveries/s, "
                          f"{f['deliveries_per_cpu_s']:,.0f} per server CPU-second; per delivery "
                          f"{f['user_us']:.2f} us user + {f['system_us']:.2f} us system; per publication "
                          f"{f['switches_per_pub']:.1f} "
                          f"context switches, {f['preempted_per_pub']:.2f} preempted; lost {f['lost']:,}", flush=True)
                rounds.append(result)
        finally:
            os.sched_setaffinity(0, set(cpus))
            for server, _ in servers.values():
                server.stop()
            if redis is not None:
                redis.stop()
    ratios = [r[2]["deliveries_per_cpu_s"] / r[1]["deliveries_per_cpu_s"] for r in rounds]
    return {"efficiency": statistics.median(ratios), "ratios": ratios,
            "deliveries_per_s": {w: statistics.median(r[w]["deliveries_per_s"] for r in rounds) for w in WORKERS},
            "per_cpu_s": {w: statistics.median(r[w]["deliveries_per_cpu_s"] for r in rounds) for w in WORKERS},
            "lost": sum(r[w]["lost"] for r in rounds for w in WORKERS)}


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The options, also offered by engine_throughput (with ``prefix`` "workers-")."""
    parser.add_argument(f"--{prefix}rate", type=float, default=25.0, help="publications/s in total")
    parser.add_argument(f"--{prefix}subscribers", type=int, default=1000, help="subscribers of one channel")
    parser.add_argument(f"--{prefix}publishers", type=int, default=16,
                        help="concurrent HTTP publishers (enough that a slow reply does not lower the rate)")
    parser.add_argument(f"--{prefix}duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument(f"--{prefix}warmup", type=float, default=2.0, help="seconds published before measuring")
    parser.add_argument(f"--{prefix}rounds", type=int, default=3, help="alternating rounds; the median is taken")


def options(args: argparse.Namespace, prefix: str = "") -> argparse.Namespace:
    """The options of ``run`` from a namespace parsed with ``add_arguments(parser, prefix)``."""
    p = prefix.replace("-", "_")
    return argparse.Namespace(
        rate=getattr(args, f"{p}rate"), subscribers=getattr(args, f"{p}subscribers"),
        publishers=getattr(args, f"{p}publishers"), duration=getattr(args, f"{p}duration"),
        warmup=getattr(args, f"{p}warmup"), rounds=getattr(args, f"{p}rounds"),
        no_pin=getattr(args, "no_pin", False), swarm="auto", lazy_ms=1.0)


def report(result: dict[str, Any], label: str = "") -> None:
    print(f"workers{label}: 2 workers / 1 worker, deliveries per server CPU-second: {result['efficiency']:.2f}x "
          f"(median of rounds {', '.join(f'{r:.2f}' for r in result['ratios'])}; "
          f"1 worker {result['per_cpu_s'][1]:,.0f}, 2 workers {result['per_cpu_s'][2]:,.0f}; lost {result['lost']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--no-pin", action="store_true", help="leave the workers and load generator unpinned")
    result = asyncio.run(run(options(parser.parse_args())))
    report(result)
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
