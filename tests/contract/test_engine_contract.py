"""Contract tests for the Broker and PresenceManager interfaces.

Every engine must pass the same functions: the ``engine`` fixture is parametrized by engine name, and the Redis
engines join the list when they exist. A recording handler stands in for the node.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from harness import wait_until

from node.broker.base import BrokerEventHandler, Engine
from node.broker.memory import MemoryBroker, MemoryPresenceManager
from node.broker.redis import RedisBroker
from node.broker.redis_presence import RedisPresenceManager
from node.config_engine import RedisEngineConfig
from node.models import ClientInfo, HistoryOptions, Publication, PublishOptions, StreamPosition

ENGINES = ["memory", "redis", "redis_cluster", "redis_2shards"]
PRESENCE_TTL = 2.0  # engines are built with this presence TTL so that expiry can be observed


@dataclass
class Recorder(BrokerEventHandler):
    publications: list[tuple[str, Publication, StreamPosition]] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo]] = field(default_factory=list)
    leaves: list[tuple[str, ClientInfo]] = field(default_factory=list)

    def handle_publication(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        self.publications.append((channel, pub, sp))

    def handle_publications(self, items: Sequence[tuple[str, Publication, StreamPosition]]) -> None:
        self.publications.extend(items)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))

    def handle_control(self, data: bytes) -> None:
        return None


def redis_addresses(name: str, request: pytest.FixtureRequest) -> tuple[str, ...]:
    if name == "redis":
        return (request.getfixturevalue("redis_standalone").url,)
    if name == "redis_cluster":
        return (request.getfixturevalue("redis_cluster").url,)
    shards = request.getfixturevalue("redis_shards")
    return tuple(s.url for s in shards)


async def make_engine(name: str, request: pytest.FixtureRequest) -> Engine:
    if name == "memory":
        return Engine(broker=MemoryBroker(), presence=MemoryPresenceManager(ttl=PRESENCE_TTL))
    cfg = RedisEngineConfig(address=redis_addresses(name, request), prefix=request.getfixturevalue("redis_prefix"))
    broker = RedisBroker(cfg, node_id=uuid.uuid4().hex)
    return Engine(broker=broker, presence=RedisPresenceManager(broker, ttl=PRESENCE_TTL))


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    engine = await make_engine(request.param, request)
    yield engine
    await engine.broker.close()
    await engine.presence.close()


@pytest.fixture
async def recorder(engine: Engine) -> Recorder:
    rec = Recorder()
    await engine.broker.start(rec)
    return rec


HISTORY = PublishOptions(history_size=3, history_ttl=60)


async def test_publish_reaches_subscribed_handler_in_order(engine: Engine, recorder: Recorder) -> None:
    await engine.broker.subscribe("a", "b")
    for i in range(5):
        await engine.broker.publish("a", b'{"i":%d}' % i, PublishOptions())
    await engine.broker.publish("b", b"1", PublishOptions(client_info=ClientInfo("c", "u")))
    await wait_until(lambda: len(recorder.publications) == 6)
    assert [p.data for ch, p, _ in recorder.publications if ch == "a"] == [b'{"i":%d}' % i for i in range(5)]
    _, pub_b, _ = recorder.publications[-1]
    assert pub_b.info == ClientInfo("c", "u")


async def test_offsets_epoch_and_trimming(engine: Engine, recorder: Recorder) -> None:
    await engine.broker.subscribe("h")
    results = [await engine.broker.publish("h", b"%d" % i, HISTORY) for i in range(1, 6)]
    assert [r.position.offset for r in results] == [1, 2, 3, 4, 5]
    epoch = results[0].position.epoch
    assert len(epoch) == 8 and epoch.isalpha() and all(r.position.epoch == epoch for r in results)
    history = await engine.broker.history("h", HistoryOptions(limit=-1))
    assert [p.offset for p in history.publications] == [3, 4, 5], "trimmed to history_size"
    assert history.position == StreamPosition(5, epoch)
    await wait_until(lambda: len(recorder.publications) == 5)
    assert [(p.offset, sp.offset, sp.epoch) for _, p, sp in recorder.publications] == \
        [(i, i, epoch) for i in range(1, 6)]


async def test_a_changed_history_size_applies_from_the_next_publish(engine: Engine, recorder: Recorder) -> None:
    """A reload may change a namespace's history_size: the stream keeps the newest that fit."""
    for i in range(1, 6):
        await engine.broker.publish("r", b"%d" % i, PublishOptions(history_size=4, history_ttl=60))
    await engine.broker.publish("r", b"6", PublishOptions(history_size=2, history_ttl=60))
    history = await engine.broker.history("r", HistoryOptions(limit=-1))
    assert [p.data for p in history.publications] == [b"5", b"6"]
    for i in range(7, 10):
        await engine.broker.publish("r", b"%d" % i, PublishOptions(history_size=5, history_ttl=60))
    history = await engine.broker.history("r", HistoryOptions(limit=-1))
    assert [p.data for p in history.publications] == [b"5", b"6", b"7", b"8", b"9"]


async def test_publish_many_delivers_each_channel_in_order(engine: Engine, recorder: Recorder) -> None:
    await engine.broker.subscribe("m1", "m2")
    items = [("m1" if i % 3 else "m2", b"%d" % i, HISTORY if i % 2 else PublishOptions()) for i in range(30)]
    results = await engine.broker.publish_many(items)
    assert all(not isinstance(r, Exception) for r in results)
    await wait_until(lambda: len(recorder.publications) == 30)
    for channel in ("m1", "m2"):
        got = [p.data for ch, p, _ in recorder.publications if ch == channel]
        assert got == [data for ch, data, _ in items if ch == channel]
    with_history = [(ch, p.offset, sp.offset) for ch, p, sp in recorder.publications if p.offset]
    assert all(offset == sp_offset for _, offset, sp_offset in with_history)
    assert [o for ch, o, _ in with_history if ch == "m1"] == list(range(1, 11))


async def test_history_reads(engine: Engine, recorder: Recorder) -> None:
    opts = PublishOptions(history_size=10, history_ttl=60)
    for i in range(1, 6):
        await engine.broker.publish("r", b"%d" % i, opts)
    top = (await engine.broker.history("r", HistoryOptions(limit=0))).position

    async def offsets(**kw: object) -> list[int]:
        result = await engine.broker.history("r", HistoryOptions(**kw))  # type: ignore[arg-type]
        assert result.position == top
        return [p.offset for p in result.publications]

    assert await offsets(limit=0) == []
    assert await offsets(limit=-1) == [1, 2, 3, 4, 5]
    assert await offsets(limit=2) == [1, 2]
    assert await offsets(limit=2, reverse=True) == [5, 4]
    assert await offsets(limit=-1, since=StreamPosition(2, top.epoch)) == [3, 4, 5]
    assert await offsets(limit=-1, since=StreamPosition(4, top.epoch), reverse=True) == [3, 2, 1]
    assert await offsets(limit=1, since=StreamPosition(5, top.epoch)) == []


async def test_reading_an_unknown_stream_creates_a_stable_epoch(engine: Engine, recorder: Recorder) -> None:
    first = await engine.broker.history("fresh", HistoryOptions(limit=0))
    second = await engine.broker.history("fresh", HistoryOptions(limit=0))
    assert first.position.offset == 0 and first.position.epoch
    assert second.position == first.position
    published = await engine.broker.publish("fresh", b"1", HISTORY)
    assert published.position == StreamPosition(1, first.position.epoch)


async def test_history_ttl_clears_entries_but_keeps_position(engine: Engine, recorder: Recorder) -> None:
    await engine.broker.publish("t", b"1", PublishOptions(history_size=10, history_ttl=1))
    top = (await engine.broker.history("t", HistoryOptions(limit=-1))).position

    async def emptied() -> bool:
        result = await engine.broker.history("t", HistoryOptions(limit=-1))
        return not result.publications and result.position == top

    await wait_until(emptied, timeout=5, interval=0.1)
    after = await engine.broker.publish("t", b"2", PublishOptions(history_size=10, history_ttl=1))
    assert after.position == StreamPosition(2, top.epoch)


async def test_meta_ttl_expiry_starts_a_new_epoch(engine: Engine, recorder: Recorder) -> None:
    opts = PublishOptions(history_size=10, history_ttl=1, history_meta_ttl=1)
    first = await engine.broker.publish("m", b"1", opts)
    # Reads extend the meta TTL, so the stream is left alone for longer than it (the TTL is what is tested).
    await asyncio.sleep(1.5)
    again = await engine.broker.publish("m", b"2", opts)
    assert again.position.epoch != first.position.epoch
    assert again.position.offset == 1


async def test_remove_history_keeps_position(engine: Engine, recorder: Recorder) -> None:
    for i in range(3):
        await engine.broker.publish("x", b"%d" % i, HISTORY)
    await engine.broker.remove_history("x")
    result = await engine.broker.history("x", HistoryOptions(limit=-1))
    assert result.publications == () and result.position.offset == 3
    assert (await engine.broker.publish("x", b"4", HISTORY)).position.offset == 4


async def test_idempotent_publish_is_suppressed(engine: Engine, recorder: Recorder) -> None:
    await engine.broker.subscribe("i")
    opts = PublishOptions(history_size=10, history_ttl=60, idempotency_key="k")
    first = await engine.broker.publish("i", b"1", opts)
    again = await engine.broker.publish("i", b"1", opts)
    assert again.suppressed and again.position == first.position
    other = await engine.broker.publish("i", b"2", PublishOptions(history_size=10, history_ttl=60))
    assert other.position.offset == 2
    await wait_until(lambda: len(recorder.publications) == 2)
    await asyncio.sleep(0)
    assert [p.data for _, p, _ in recorder.publications] == [b"1", b"2"]


async def test_delta_publication_carries_previous_payload(engine: Engine, recorder: Recorder) -> None:
    await engine.broker.subscribe("d")
    opts = PublishOptions(history_size=10, history_ttl=60, use_delta=True)
    await engine.broker.publish("d", b'{"v":1}', opts)
    await engine.broker.publish("d", b'{"v":2}', opts)
    await wait_until(lambda: len(recorder.publications) == 2)
    first, second = (p for _, p, _ in recorder.publications)
    assert second.delta and second.prev_data == b'{"v":1}'
    assert first.prev_data is None


async def test_join_leave_reach_handler(engine: Engine, recorder: Recorder) -> None:
    await engine.broker.subscribe("j")
    info = ClientInfo("c1", "u1", conn_info=b'{"a":1}')
    await engine.broker.publish_join("j", info)
    await engine.broker.publish_leave("j", info)
    await wait_until(lambda: recorder.joins and recorder.leaves)
    assert recorder.joins == [("j", info)] and recorder.leaves == [("j", info)]


async def test_presence(engine: Engine, recorder: Recorder) -> None:
    presence = engine.presence
    assert await presence.presence("p") == {}
    assert (await presence.presence_stats("p")).num_clients == 0
    a = ClientInfo("c1", "u1", chan_info=b'{"x":1}')
    await presence.add_presence("p", "c1", a)
    await presence.add_presence("p", "c2", ClientInfo("c2", "u1"))
    await presence.add_presence("p", "c3", ClientInfo("c3", "u2"))
    await presence.add_presence("p", "c1", a)  # re-adding refreshes, never duplicates
    entries = await presence.presence("p")
    assert set(entries) == {"c1", "c2", "c3"} and entries["c1"] == a
    stats = await presence.presence_stats("p")
    assert (stats.num_clients, stats.num_users) == (3, 2)
    await presence.remove_presence("p", "c3", "u2")
    stats = await presence.presence_stats("p")
    assert (stats.num_clients, stats.num_users) == (2, 1)
    assert await presence.presence("other") == {}


async def test_presence_entries_expire_unless_refreshed(engine: Engine, recorder: Recorder) -> None:
    presence = engine.presence
    await presence.add_presence("e", "stale", ClientInfo("stale", "u1"))
    await presence.add_presence("e", "live", ClientInfo("live", "u2"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PRESENCE_TTL * 1.5
    while loop.time() < deadline:  # "live" is refreshed, as a connection's timer does; "stale" is not
        await presence.add_presence("e", "live", ClientInfo("live", "u2"))
        await asyncio.sleep(PRESENCE_TTL / 4)
    assert set(await presence.presence("e")) == {"live"}
    stats = await presence.presence_stats("e")
    assert (stats.num_clients, stats.num_users) == (1, 1)
