"""Redis-only behaviour: script cache loss (a promoted replica, SCRIPT FLUSH), channel names that are not valid
hash tags, and the batched publish path under concurrency."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from harness import wait_until
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from test_engine_contract import Recorder, redis_addresses

from node.broker.redis import RedisBroker
from node.config_engine import RedisEngineConfig
from node.models import HistoryOptions, PublishOptions


@pytest.fixture(params=["redis", "redis_cluster"])
async def broker(request: pytest.FixtureRequest) -> RedisBroker:
    cfg = RedisEngineConfig(address=redis_addresses(request.param, request),
                            prefix=request.getfixturevalue("redis_prefix"))
    broker = RedisBroker(cfg, node_id=uuid.uuid4().hex)
    yield broker  # type: ignore[misc]
    await broker.close()


async def flush_scripts(broker: RedisBroker) -> None:
    for shard in broker.shards:
        sha = shard.scripts["publish"].sha
        if isinstance(shard.client, AsyncRedisCluster):
            for node in shard.client.get_primaries():
                await shard.client.execute_command("SCRIPT FLUSH", target_nodes=node)
                assert await shard.client.execute_command("SCRIPT EXISTS", sha, target_nodes=node) in ([0], [False])
        else:
            await shard.client.script_flush()
            assert await shard.client.script_exists(sha) == [False]


async def test_concurrent_publishes_survive_a_script_cache_flush(broker: RedisBroker) -> None:
    rec = Recorder()
    await broker.start(rec)
    await broker.subscribe("flushed")
    opts = PublishOptions(history_size=100, history_ttl=60)
    await broker.publish("flushed", b"0", opts)
    await flush_scripts(broker)
    results = await asyncio.gather(*(broker.publish("flushed", b"%d" % i, opts) for i in range(1, 41)))
    assert sorted(r.position.offset for r in results) == list(range(2, 42)), "every publish got its own offset"
    await wait_until(lambda: len(rec.publications) == 41)
    offsets = [p.offset for _, p, _ in rec.publications]
    assert offsets == sorted(offsets), "delivered in stream order"


async def test_channels_with_braces_keep_their_keys_in_one_slot(broker: RedisBroker) -> None:
    rec = Recorder()
    await broker.start(rec)
    odd = ["a{b}c", "}x{", "{}", "user:{42}"]
    await broker.subscribe(*odd)
    for ch in odd:
        result = await broker.publish(ch, b'"v"', PublishOptions(history_size=5, history_ttl=60))
        assert result.position.offset == 1
        history = await broker.history(ch, HistoryOptions(limit=-1))
        assert [p.data for p in history.publications] == [b'"v"']
    await wait_until(lambda: sorted(ch for ch, _, _ in rec.publications) == sorted(odd))
