"""The batched publish path of the Redis engine (pipelined EVALSHA bursts per server): per-channel order, errors
that stay with their own caller, and no acknowledged publication lost when Redis restarts mid-burst; on a
standalone Redis and on a Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import wait_until
from redis_servers import RedisCluster, RedisStandalone, free_port
from test_engine_contract import Recorder, redis_addresses

from node.broker.redis import RedisBroker
from node.broker.redis_shard import ScriptError
from node.config_engine import RedisEngineConfig
from node.models import HistoryOptions, PublishOptions, PublishResult

HISTORY = PublishOptions(history_size=100000, history_ttl=300)
# Written to disk before every reply, so a SIGKILL loses nothing the server acknowledged.
DURABLE = {"appendonly": "yes", "appendfsync": "always"}


@pytest.fixture(params=["redis", "redis_cluster"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[RedisBroker]:
    cfg = RedisEngineConfig(address=redis_addresses(request.param, request),
                            prefix=request.getfixturevalue("redis_prefix"))
    broker = RedisBroker(cfg, node_id=uuid.uuid4().hex)
    yield broker
    await broker.close()


async def test_a_burst_keeps_each_channels_order(broker: RedisBroker) -> None:
    rec = Recorder()
    await broker.start(rec)
    channels = [f"order:{i}" for i in range(8)]  # spread over the Cluster's masters
    await broker.subscribe(*channels)
    items = [(channels[i % len(channels)], b"%d" % i, HISTORY) for i in range(400)]
    # One group, plus single publishes issued in the same loop iteration: they share the bursts.
    group = asyncio.ensure_future(broker.publish_many(items))
    singles = [asyncio.ensure_future(broker.publish("order:single", b"%d" % i, HISTORY)) for i in range(50)]
    results = await group
    assert all(isinstance(r, PublishResult) for r in results), results
    for ch in channels:
        offsets = [r.position.offset for (c, _, _), r in zip(items, results, strict=True)
                   if c == ch and isinstance(r, PublishResult)]
        assert offsets == list(range(1, 51)), f"{ch}: offsets follow the order of the items"
    assert [r.position.offset for r in await asyncio.gather(*singles)] == list(range(1, 51)), \
        "concurrent callers of one channel get offsets in the order they called"
    await wait_until(lambda: len(rec.publications) == len(items), what="every publication delivered back")
    for ch in channels:
        got = [(p.offset, p.data) for c, p, _ in rec.publications if c == ch]
        sent = [(n + 1, data) for n, (_, data, _) in enumerate(i for i in items if i[0] == ch)]
        assert got == sent, f"{ch}: delivered in stream order with the right payloads"


async def test_a_failing_script_fails_only_its_own_callers(broker: RedisBroker) -> None:
    await broker.start(Recorder())
    broken = "errors:broken"
    # A stream key of the wrong type makes publish.lua fail (XADD: WRONGTYPE) for this channel only.
    shard = broker.shard(broken)
    await shard.client.set(broker.keys.stream(broken), "not a stream")
    await shard.client.hset(broker.keys.meta(broken), "s", "5")
    good = [f"errors:ok{i}" for i in range(5)]
    items = [(good[i % 5] if i % 3 else broken, b"%d" % i, HISTORY) for i in range(60)]
    results = await broker.publish_many(items)
    for (ch, _, _), result in zip(items, results, strict=True):
        if ch == broken:
            assert isinstance(result, ScriptError) and "WRONGTYPE" in str(result), result
        else:
            assert isinstance(result, PublishResult), result
    for ch in good:
        assert [r.position.offset for (c, _, _), r in zip(items, results, strict=True)
                if c == ch and isinstance(r, PublishResult)] == list(range(1, 9))
    # Concurrent single callers in one burst: the failure reaches the caller of the broken channel alone.
    outcomes = await asyncio.gather(broker.publish(good[0], b"a", HISTORY), broker.publish(broken, b"b", HISTORY),
                                    broker.publish(good[1], b"c", HISTORY), return_exceptions=True)
    assert isinstance(outcomes[0], PublishResult) and outcomes[0].position.offset == 9
    assert isinstance(outcomes[1], ScriptError)
    assert isinstance(outcomes[2], PublishResult) and outcomes[2].position.offset == 9
    # The same through publish_soon (the API fast path's call: no task, the reply settles the future).
    soon = [broker.publish_soon(good[0], b"d", HISTORY), broker.publish_soon(broken, b"e", HISTORY),
            broker.publish_soon(good[0], b"f", HISTORY)]
    settled = await asyncio.gather(*soon, return_exceptions=True)
    assert [r.position.offset if isinstance(r, PublishResult) else type(r) for r in settled] == [10, ScriptError, 11]


async def _publish_through_a_restart(broker: RedisBroker, restart: asyncio.Future[None], channels: list[str],
                                     failed: list[BaseException]) -> list[tuple[str, PublishResult, bytes]]:
    """Publish bursts (a group plus single callers) until ``restart`` is done and 200 more were acknowledged;
    returns every acknowledged publication (and collects the failures in ``failed``)."""
    acked: list[tuple[str, PublishResult, bytes]] = []
    after = 0
    n = 0
    while not restart.done() or after < 200:
        items = [(channels[(n + i) % len(channels)], b'"%d"' % (n + i), HISTORY) for i in range(40)]
        singles = [(channels[i % len(channels)], b'"s%d-%d"' % (n, i)) for i in range(8)]
        n += len(items)
        outcomes = await asyncio.gather(broker.publish_many(items),
                                        *(broker.publish_soon(ch, data, HISTORY) if i % 2 else
                                          broker.publish(ch, data, HISTORY) for i, (ch, data) in enumerate(singles)),
                                        return_exceptions=True)
        group = outcomes[0]
        results = list(group) if isinstance(group, list) else [group] * len(items)
        results += outcomes[1:]
        for (ch, data, *_), result in zip([*items, *singles], results, strict=True):
            if isinstance(result, PublishResult):
                acked.append((ch, result, data))
                after += restart.done()
            else:
                failed.append(result)
    return acked


async def _check_history(broker: RedisBroker, acked: list[tuple[str, PublishResult, bytes]]) -> None:
    assert len(acked) > 200
    for ch in {ch for ch, _, _ in acked}:
        history = await broker.history(ch, HistoryOptions(limit=-1))
        stored = {p.offset: p.data for p in history.publications}
        for c, result, data in acked:
            if c == ch:
                assert stored.get(result.position.offset) == data, \
                    f"{ch}: acknowledged publication {result.position.offset} is in the stream"


async def test_standalone_restart_mid_burst_loses_no_acknowledged_publication(tmp_path: Path,
                                                                              redis_prefix: str) -> None:
    redis = await asyncio.to_thread(RedisStandalone(tmp_path / "redis", settings=DURABLE).start)
    broker = RedisBroker(RedisEngineConfig(address=(redis.url,), prefix=redis_prefix), node_id="restart")
    try:
        await broker.start(Recorder())
        restart: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed: list[BaseException] = []
        publishing = asyncio.ensure_future(_publish_through_a_restart(broker, restart, ["r:a", "r:b", "r:c"], failed))
        await wait_until(lambda: publishing.done() or redis.client().xlen(broker.keys.stream("r:a")) > 300,
                         what="publishing under way")
        await asyncio.to_thread(redis.kill)
        await wait_until(lambda: failed, timeout=60, what="publications fail while Redis is down")
        await asyncio.to_thread(redis.start)
        restart.set_result(None)
        await _check_history(broker, await asyncio.wait_for(publishing, 120))
    finally:
        await broker.close()
        await asyncio.to_thread(redis.stop)


async def test_cluster_master_restart_mid_burst_loses_no_acknowledged_publication(tmp_path: Path,
                                                                                  redis_prefix: str) -> None:
    ports: list[int] = []
    for _ in range(3):
        ports.append(free_port(ports))
    cluster = await asyncio.to_thread(RedisCluster(tmp_path / "cluster", ports=ports, replicas=0,
                                                   settings=DURABLE).start)
    broker = RedisBroker(RedisEngineConfig(address=(cluster.url,), prefix=redis_prefix), node_id="restart")
    channels = [f"rc:{i}" for i in range(6)]
    try:
        await broker.start(Recorder())
        restart: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed: list[BaseException] = []
        publishing = asyncio.ensure_future(_publish_through_a_restart(broker, restart, channels, failed))
        port = cluster.master_for_key(broker.keys.stream(channels[0]))
        stream = broker.keys.stream(channels[0])
        await wait_until(lambda: publishing.done() or cluster.client(port).xlen(stream) > 100,
                         what="publishing under way")
        await asyncio.to_thread(cluster.kill_node, port)
        await wait_until(lambda: failed, timeout=60, what="publications to the dead master fail")
        await asyncio.to_thread(cluster.restart_node, port)
        await asyncio.to_thread(cluster.wait_healthy)
        restart.set_result(None)
        await _check_history(broker, await asyncio.wait_for(publishing, 120))
    finally:
        await broker.close()
        await asyncio.to_thread(cluster.stop)


async def test_closing_the_broker_settles_the_publishes_in_flight(broker: RedisBroker) -> None:
    await broker.start(Recorder())
    await broker.publish("closing", b"0", HISTORY)  # the command connections are up
    in_flight = [broker.publish_soon("closing", b"%d" % i, HISTORY) for i in range(1, 6)]
    await broker.close()  # before the burst is even written
    outcomes = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), 30)
    assert all(isinstance(o, Exception) for o in outcomes), "no caller is left waiting, none is told it worked"
