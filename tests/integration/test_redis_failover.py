"""Failover: a Redis Cluster master dies while a node publishes. Every acknowledged publication must reach the
subscriber (live, or through recovery once PUB/SUB is back), and publishing must resume after the failover."""

from __future__ import annotations

import asyncio
import time

from harness import PyFactory, ServerFactory, unique_channel, wait_until
from redis_servers import RedisClusterFactory
from test_redis_nodes import redis_engine


async def test_master_kill_while_publishing_loses_nothing(server_factory: ServerFactory,
                                                          redis_cluster_factory: RedisClusterFactory,
                                                          redis_prefix: str, py_factory: PyFactory) -> None:
    cluster = await asyncio.to_thread(redis_cluster_factory)
    config = redis_engine(cluster.url, redis_prefix)
    publisher = await server_factory(config, name="publisher")
    subscriber_node = await server_factory(config, name="subscriber")
    ch = unique_channel("feed:")  # forced recovery and positioning
    py = await py_factory(subscriber_node, "sub", min_reconnect_delay=0.2, max_reconnect_delay=1.0)
    await py.subscribe(ch)

    acked: list[int] = []
    errors = 0
    stop = asyncio.Event()
    killed_at = 0.0
    first_ack_after_kill = 0.0

    async def publish_loop() -> None:
        nonlocal errors, first_ack_after_kill
        i = 0
        while not stop.is_set():
            i += 1
            status, body = await publisher.api_raw("publish", {"channel": ch, "data": {"i": i}})
            if status == 200 and b'"result"' in body:
                acked.append(i)
                if killed_at and not first_ack_after_kill:
                    first_ack_after_kill = time.monotonic()
            else:
                errors += 1  # an error reaches the caller: that publication is not acknowledged
            await asyncio.sleep(0.02)

    publishing = asyncio.create_task(publish_loop())
    await wait_until(lambda: len(acked) >= 20, timeout=10)
    killed_port = await asyncio.to_thread(cluster.kill_master_for_key, ch)
    killed_at = time.monotonic()
    before_kill = len(acked)
    await wait_until(lambda: first_ack_after_kill, timeout=30, interval=0.1, what="publishing resumes")
    await wait_until(lambda: len(acked) >= 20 + 50, timeout=30, interval=0.1)
    stop.set()
    await publishing

    def received() -> set[int]:
        return {e.ctx.pub.data["i"] for e in py.events("publication", ch)}

    try:
        await wait_until(lambda: set(acked) <= received(), timeout=30, interval=0.1,
                         what="every acknowledged publication delivered")
    except AssertionError:
        missing = sorted(set(acked) - received())
        raise AssertionError(f"acknowledged but never delivered: {missing}\n{py.describe(40)}\n"
                             f"{subscriber_node.log_report(40)}\n{publisher.log_report(20)}") from None
    after_kill = set(acked[before_kill:])
    live_again = min(e.at for e in py.events("publication", ch) if e.ctx.pub.data["i"] in after_kill)
    print(f"\nmaster :{killed_port} killed; publishing resumed after {first_ack_after_kill - killed_at:.2f}s, "
          f"live delivery after {live_again - killed_at:.2f}s; "
          f"{len(acked)} acknowledged, {errors} refused during failover, "
          f"{len(py.events('subscribed', ch))} subscribes (recoveries included)")
    assert set(acked) <= received()
