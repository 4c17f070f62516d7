"""``bench --engine nats``: the same workload over a NATS broker (presence in Redis) and over the Redis engine,
in one run, with the ratios printed. Both run against private servers started from the binaries the test suite
uses (tests/nats_servers.py, tests/redis_servers.py, not installed packages, hence the path)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

TESTS = str(Path(__file__).resolve().parent.parent / "tests")
RunOne = Callable[[str, int, argparse.Namespace, dict[str, Any]], Awaitable[dict[str, Any]]]
Report = Callable[[str, dict[str, Any]], None]


def _configs(nats_url: str, redis_url: str) -> dict[str, dict[str, Any]]:
    return {
        "redis": {"engine": {"type": "redis", "redis": {"address": [redis_url]}}},
        "nats": {"broker": {"enabled": True, "type": "nats", "nats": {"url": nats_url}},
                 "presence_manager": {"enabled": True, "type": "redis", "redis": {"address": [redis_url]}}},
    }


async def compare_engines(args: argparse.Namespace, workers: int, run_one: RunOne, report: Report) -> int:
    """``run_one`` and ``report`` are bench's (passed in: bench imports this module)."""
    if not args.spawn:
        raise SystemExit("--engine nats needs --spawn (it starts nats-server and redis-server for the run)")
    sys.path.insert(0, TESTS)
    from nats_servers import NatsServer  # noqa: PLC0415
    from redis_servers import RedisStandalone, ensure_redis_installed  # noqa: PLC0415

    ensure_redis_installed()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fugato-bench-engines-") as workdir:
        nats = NatsServer(Path(workdir) / "nats")
        redis = RedisStandalone(Path(workdir) / "redis")
        nats.start()
        redis.start()
        try:
            for name, engine in _configs(nats.url, redis.url).items():
                results[name] = result = await run_one("fugato", workers, args, engine)
                report(f"fugato: {args.scenario}, {args.subscribers} subscribers, {args.publishers} publishers, "
                       f"rate {args.rate or 'max'}, {args.duration}s, {name} ({workers} worker(s))", result)
        finally:
            nats.stop()
            redis.stop()
    if all("deliveries_per_server_cpu_s" in r for r in results.values()):
        pubs = {n: r["publications"] / r["seconds"] for n, r in results.items()}
        print(f"NATS / Redis publications/s: {pubs['nats'] / pubs['redis']:.2f}x "
              f"({pubs['nats']:,.0f} vs {pubs['redis']:,.0f})")
        per_cpu = {n: r["deliveries_per_server_cpu_s"] for n, r in results.items()}
        print(f"NATS / Redis deliveries per server CPU-second: {per_cpu['nats'] / per_cpu['redis']:.2f}x "
              f"({per_cpu['nats']:,.0f} vs {per_cpu['redis']:,.0f})")
    return 0 if all(r.get("lost", 0) == 0 for r in results.values()) else 1
