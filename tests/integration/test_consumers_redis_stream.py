"""The Redis Streams consumer against a real redis-server (the session's standalone one; keys are unique)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from consumer_scenarios import (
    SLOW_TEST_TIMEOUT,
    barrier,
    exactly_once_across_a_killed_node,
    health_names,
    metric,
    publish_command,
    redis_engine,
    seqs,
    subscribed_client,
)
from harness import PyFactory, ServerFactory, unique_channel, wait_until
from redis.exceptions import ResponseError
from redis_servers import RedisStandalone

GROUP = "fugato"


def consumer(redis_url: str, streams: list[str], **options: Any) -> dict[str, Any]:
    """A consumer in Centrifugo v6's keys."""
    return {"consumers": [{
        "enabled": True, "name": "streams", "type": "redis_stream",
        "redis_stream": {"address": [redis_url], "streams": streams, "consumer_group": GROUP,
                         "visibility_timeout": "2s", "num_workers": 1, **options},
    }]}


async def create_groups(r: aioredis.Redis, streams: list[str]) -> None:
    """As an application would before producing: entries added before the group exists are not consumed."""
    for stream in streams:
        try:
            await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as e:  # the consumer created it first (at "$", the end, as Centrifugo does)
            assert "BUSYGROUP" in str(e)


async def pending(r: aioredis.Redis, streams: list[str]) -> int:
    return sum([int((await r.xpending(s, GROUP))["pending"]) for s in streams])


@pytest.mark.timeout(SLOW_TEST_TIMEOUT)
async def test_stream_entries_reach_clients_exactly_once_in_order_across_a_killed_node(
        server_factory: ServerFactory, py_factory: PyFactory, redis_standalone: RedisStandalone,
        redis_prefix: str) -> None:
    partitions, per_partition, per_tx = 4, 2500, 50
    streams = [f"{redis_prefix}.stream{p}" for p in range(partitions)]
    r = aioredis.Redis(host="127.0.0.1", port=redis_standalone.port)
    await create_groups(r, streams)
    config = {**redis_engine(redis_standalone.url, redis_prefix), **consumer(redis_standalone.url, streams)}

    async def writer(stream: str, channel: str) -> None:  # one writer per stream, MULTI/EXEC batches
        for start in range(0, per_partition, per_tx):
            async with r.pipeline(transaction=True) as pipe:
                for seq in range(start, start + per_tx):
                    pipe.xadd(stream, {"method": "publish", "payload": json.dumps(publish_command(channel, seq))})
                await pipe.execute()

    async def produce(channels: list[str]) -> None:
        await asyncio.gather(*(writer(s, ch) for s, ch in zip(streams, channels, strict=True)))

    async def drained() -> bool:
        return await pending(r, streams) == 0

    try:
        await exactly_once_across_a_killed_node(server_factory, py_factory, config, partitions=partitions,
                                                per_partition=per_partition, produce=produce, drained=drained)
    finally:
        await r.delete(*streams)
        await r.aclose()


async def test_poison_entries_are_acknowledged_and_counted_shared_workers_deliver_all_and_an_outage_heals(
        server_factory: ServerFactory, py_factory: PyFactory, tmp_path: Path) -> None:
    source = RedisStandalone(tmp_path / "source").start()  # private: the test stops it
    stream = "poison"
    r = aioredis.Redis(host="127.0.0.1", port=source.port)
    await create_groups(r, [stream])
    server = await server_factory({**consumer(source.url, [stream], num_workers=3), "prometheus": {"enabled": True}})
    ch = unique_channel("plain")
    py = await subscribed_client(py_factory, server, [ch])
    for fields in [
        {"method": "publish", "payload": "{not json"},
        {"method": "presence", "payload": json.dumps({"channel": ch})},
        {"method": "publish"},  # no payload field
        {"method": "publish", "payload": json.dumps({"channel": "nonexistent_ns:x", "data": 1})},
        {"payload": json.dumps({"method": "publish", "payload": {"channel": ch, "data": {"seq": 0}}})},
        *({"method": "publish", "payload": json.dumps({"channel": ch, "data": {"seq": i}})} for i in range(1, 30)),
    ]:
        await r.xadd(stream, fields)
    try:
        # Three workers share the stream: all arrive, in some order.
        await wait_until(lambda: sorted(seqs(py, ch)) == list(range(30)), timeout=20, what="every good entry")
        await wait_until(lambda: _is_zero(pending(r, [stream])), timeout=10, what="nothing left pending")
        assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="malformed"') == 2
        assert await metric(server, "centrifugo_consumers_messages_skipped_total",
                            'reason="unsupported_method"') == 1
        assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="rejected"') == 1
        assert await metric(server, "centrifugo_consumers_messages_processed_total") == 34

        source.stop()  # /health names the consumer within seconds (and stays 200)
        await wait_until(lambda: health_names(server, "streams"), timeout=20, what="/health reports the consumer")
        source.start()
        await create_groups(r, [stream])  # the restarted Redis kept nothing
        await wait_until(lambda: health_names(server, ""), timeout=30, what="the consumer recovers by itself")
        await r.xadd(stream, {"method": "publish", "payload": json.dumps({"channel": ch, "data": {"seq": 30}})})
        await wait_until(lambda: sorted(seqs(py, ch)) == list(range(31)), timeout=20, what="an entry after the outage")
        await barrier(server, py, [ch])
        assert sorted(seqs(py, ch)[:-1]) == list(range(31))
    finally:
        await server.stop()  # before its source, so that it does not spend its stop grace retrying
        await r.aclose()
        source.stop()


async def _is_zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def test_publication_data_mode(server_factory: ServerFactory, py_factory: PyFactory,
                                     redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    stream = f"{redis_prefix}.pubdata"
    r = aioredis.Redis(host="127.0.0.1", port=redis_standalone.port)
    await create_groups(r, [stream])
    server = await server_factory({**consumer(redis_standalone.url, [stream],
                                              publication_data_mode={"enabled": True}),
                                   "prometheus": {"enabled": True}})
    a, b = unique_channel("plain"), unique_channel("plain")
    py = await subscribed_client(py_factory, server, [a, b])
    try:
        for fields in [
            {"payload": json.dumps({"seq": 0}), "centrifugo-channels": a, "centrifugo-tag-kind": "first"},
            {"payload": json.dumps({"seq": 1}), "centrifugo-channels": f"{a},{b}", "centrifugo-idempotency-key": "k1"},
            {"payload": json.dumps({"seq": 1}), "centrifugo-channels": f"{a},{b}", "centrifugo-idempotency-key": "k1"},
            {"payload": json.dumps({"seq": 9})},  # no channels: skipped
            {"payload": "{not json", "centrifugo-channels": a},  # skipped
            {"payload": json.dumps({"seq": 2}), "centrifugo-channels": a, "centrifugo-delta": "false"},
        ]:
            await r.xadd(stream, fields)
        await wait_until(lambda: seqs(py, a) == [0, 1, 2] and seqs(py, b) == [1], timeout=20,
                         what="publications routed by the entry's fields")
        assert py.events("publication", a)[0].ctx.pub.tags == {"kind": "first"}
        assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="malformed"') == 2
        await barrier(server, py, [a, b])
        assert (seqs(py, a), seqs(py, b)) == ([0, 1, 2, "end"], [1, "end"]), "the repeated key published once"
    finally:
        await r.delete(stream)
        await r.aclose()
