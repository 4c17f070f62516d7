"""In-process publish throughput through each engine: memory, Redis standalone, Redis Cluster.

    python -m loadtest.engine_bench [--messages N] [--concurrency C] [--channels K] [--redis URL] [--cluster URL]

Publishes N messages with history (size 100, ttl 300 s) from C concurrent publishers over K channels that the
node is subscribed to, and counts the deliveries that come back through the broker (as a node's hub would get
them). Without --redis/--cluster it starts its own redis-server processes on free ports (needs redis-server
>= 7) and stops them afterwards. Prints messages/s per engine, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path

from node.broker.base import Broker, BrokerEventHandler
from node.broker.memory import MemoryBroker
from node.broker.redis import RedisBroker
from node.config_engine import RedisEngineConfig
from node.models import ClientInfo, Publication, PublishOptions, StreamPosition


class Counter(BrokerEventHandler):
    def __init__(self) -> None:
        self.delivered = 0
        self.done = asyncio.Event()
        self.target = 0

    def handle_publication(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        self.delivered += 1
        if self.delivered >= self.target:
            self.done.set()

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        return None

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        return None

    def handle_control(self, data: bytes) -> None:
        return None

    def handle_resubscribed(self, channels: list[str]) -> None:
        return None


async def run(broker: Broker, messages: int, concurrency: int, channels: int) -> tuple[float, int]:
    counter = Counter()
    counter.target = messages
    await broker.start(counter)
    names = [f"bench:{i}" for i in range(channels)]
    await broker.subscribe(*names)
    opts = PublishOptions(history_size=100, history_ttl=300)
    payload = b'{"text":"' + b"x" * 80 + b'"}'
    queue = iter(range(messages))

    async def publisher() -> None:
        for i in queue:
            await broker.publish(names[i % channels], payload, opts)

    started = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    with suppress(TimeoutError):
        await asyncio.wait_for(counter.done.wait(), 30)
    elapsed = time.perf_counter() - started
    await broker.close()
    return messages / elapsed, counter.delivered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--redis", help="redis:// URL of a standalone server (default: start one)")
    parser.add_argument("--cluster", help="redis+cluster:// URL (default: start a 6-node cluster)")
    args = parser.parse_args()
    with ExitStack() as stack:
        redis_url, cluster_url = args.redis, args.cluster
        if not redis_url or not cluster_url:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from redis_servers import RedisCluster, RedisStandalone  # noqa: PLC0415 - only when we start servers

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            if not redis_url:
                redis_url = stack.enter_context(RedisStandalone(tmp / "standalone")).url
            if not cluster_url:
                cluster = RedisCluster(tmp / "cluster").start()
                stack.callback(cluster.stop)
                cluster_url = cluster.url
        engines: list[tuple[str, Broker]] = [
            ("memory", MemoryBroker()),
            ("redis", RedisBroker(RedisEngineConfig(address=(redis_url,), prefix="bench" + uuid.uuid4().hex[:6]),
                                  node_id="bench")),
            ("redis cluster", RedisBroker(RedisEngineConfig(address=(cluster_url,),
                                                            prefix="bench" + uuid.uuid4().hex[:6]), node_id="bench")),
        ]
        print(f"{args.messages} publications with history, {args.concurrency} concurrent publishers, "
              f"{args.channels} channels, one node in-process")
        results = {}
        for name, broker in engines:
            rate, delivered = asyncio.run(run(broker, args.messages, args.concurrency, args.channels))
            results[name] = rate
            print(f"  {name:14s} {rate:10.0f} publications/s  (delivered back {delivered}/{args.messages})")
        base = results["memory"]
        for name in ("redis", "redis cluster"):
            print(f"  {name} / memory = {results[name] / base:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
