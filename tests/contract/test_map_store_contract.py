"""Contract tests for the map backends (``map_broker``): the memory store on the memory broker, Redis
(standalone and Cluster) and PostgreSQL (the local trust server on 127.0.0.1:5432, tables under a fresh
prefix per test) run the same scenarios: state pages, the change stream with keys and removals, key TTL expiry
announced once as a removal, recovery from the stream, and delivery to another node on the same backend.
A recording handler stands in for the node."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from harness import wait_until
from postgres_server import LOCAL_PG, drop_pg_schema
from test_engine_contract import Recorder, redis_addresses

from node.broker.base import Broker
from node.broker.memory import MemoryBroker
from node.broker.postgres_map import PostgresMapBroker
from node.broker.redis import RedisBroker
from node.broker.redis_map import RedisMapStore
from node.config_engine import RedisEngineConfig
from node.maps.broker_config import PostgresMapBrokerConfig, PostgresMapOutboxConfig
from node.maps.state import Conditions
from node.maps.store import MapStore, MemoryMapStore
from node.models import HistoryOptions, PublishOptions, StreamPosition

# Backends that several nodes share; "postgres_notify" polls only every 30 s, so its deliveries to another node
# come through LISTEN/NOTIFY (use_notify).
SHARED = ["redis", "redis_cluster", "postgres", "postgres_notify"]
BACKENDS = ["memory", *SHARED]
STREAM = PublishOptions(history_size=100, history_ttl=60, history_meta_ttl=3600)


@dataclass
class Node:
    broker: Broker
    store: MapStore
    recorder: Recorder


NodeFactory = Callable[[], Awaitable[Node]]


@pytest.fixture(params=BACKENDS)
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[NodeFactory]:
    """Makes nodes on one backend (each a broker, its map store and a recorder)."""
    made: list[Broker] = []
    prefix = "fgt" + uuid.uuid4().hex[:10]

    def build() -> tuple[Broker, MapStore]:
        if request.param == "memory":
            memory = MemoryBroker()
            return memory, MemoryMapStore(memory.publish, memory.history)
        if request.param.startswith("postgres"):
            notify = request.param == "postgres_notify"
            outbox = PostgresMapOutboxConfig(poll_interval=30.0 if notify else 0.1)
            pg = PostgresMapBroker(PostgresMapBrokerConfig(dsn=LOCAL_PG, table_prefix=prefix, num_shards=2,
                                                           use_notify=notify, outbox=outbox))
            return pg, pg
        redis = RedisBroker(RedisEngineConfig(address=redis_addresses(request.param, request), prefix=prefix),
                            node_id=uuid.uuid4().hex)
        return redis, RedisMapStore(redis)

    async def make() -> Node:
        broker, store = build()
        made.append(broker)
        recorder = Recorder()
        await broker.start(recorder)
        return Node(broker, store, recorder)

    yield make
    for broker in made:
        await broker.close()
    if request.param.startswith("postgres"):
        drop_pg_schema(LOCAL_PG, prefix)


@pytest.fixture
async def node(nodes: NodeFactory) -> Node:
    return await nodes()


def keyed(key: str, *, removed: bool = False) -> PublishOptions:
    return PublishOptions(history_size=STREAM.history_size, history_ttl=STREAM.history_ttl,
                          history_meta_ttl=STREAM.history_meta_ttl, key=key, removed=removed)


async def test_state_pages_in_key_order(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    offsets = [(await node.store.set(ch, b'{"v":%d}' % i, keyed(k), 0)).position.offset
               for i, k in enumerate(["b", "a", "c"])]
    assert offsets == sorted(offsets) and len(set(offsets)) == 3
    first, cursor = await node.store.page(ch, "", 2)
    assert [(k, e.data) for k, e in first] == [("a", b'{"v":1}'), ("b", b'{"v":0}')]
    assert cursor
    rest, end = await node.store.page(ch, cursor, 2)
    assert [(k, e.data, e.offset) for k, e in rest] == [("c", b'{"v":2}', offsets[2])]
    assert end == ""
    assert await node.store.count(ch) == 3
    await node.store.set(ch, b'{"v":9}', keyed("a"), 0)
    entries, _ = await node.store.page(ch, "", 10)
    assert dict((k, e.data) for k, e in entries)["a"] == b'{"v":9}', "a key set again keeps only its last value"
    assert await node.store.count(ch) == 3


async def test_changes_reach_subscribers_with_keys_and_removals(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    await node.broker.subscribe(ch)
    set_result = await node.store.set(ch, b'"x"', keyed("k"), 0)
    removed = await node.store.remove(ch, keyed("k", removed=True))
    assert not removed.suppressed and removed.position.offset == set_result.position.offset + 1
    again = await node.store.remove(ch, keyed("k", removed=True))
    assert again.suppressed, "removing a key that is not there announces nothing"
    await wait_until(lambda: len(node.recorder.publications) >= 2)
    changes = [(p.key, p.removed, p.offset, sp) for c, p, sp in node.recorder.publications if c == ch]
    epoch = set_result.position.epoch
    assert changes == [("k", False, set_result.position.offset, StreamPosition(set_result.position.offset, epoch)),
                       ("k", True, removed.position.offset, StreamPosition(removed.position.offset, epoch))]
    assert await node.store.page(ch, "", 10) == ([], "")
    # A marker after the suppressed removal: once it has arrived, anything that removal announced would have too.
    marker = await node.store.set(ch, b'"m"', keyed("marker"), 0)
    await wait_until(lambda: len([1 for c, _, _ in node.recorder.publications if c == ch]) >= 3)
    assert [(p.key, p.offset) for c, p, _ in node.recorder.publications if c == ch][2:] == [
        ("marker", marker.position.offset)], "nothing arrives for the suppressed removal"


async def test_stream_recovers_changes_after_a_position(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    results = [await node.store.set(ch, b"%d" % i, keyed(f"k{i % 2}"), 0) for i in range(5)]
    await node.store.remove(ch, keyed("k0", removed=True))
    since = results[1].position
    history = await node.broker.history(ch, HistoryOptions(since=since, limit=-1, history_meta_ttl=3600))
    assert [(p.offset, p.key, p.removed, p.data) for p in history.publications] == [
        (3, "k0", False, b"2"), (4, "k1", False, b"3"), (5, "k0", False, b"4"), (6, "k0", True, b"")]
    assert history.position == StreamPosition(6, since.epoch)
    top = await node.broker.history(ch, HistoryOptions(limit=0, history_meta_ttl=3600))
    assert top.position == history.position and top.publications == ()


async def test_stream_keeps_its_size(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    small = PublishOptions(history_size=2, history_ttl=60, history_meta_ttl=3600, key="k")
    for i in range(5):
        await node.store.set(ch, b"%d" % i, small, 0)
    history = await node.broker.history(ch, HistoryOptions(limit=-1, history_meta_ttl=3600))
    assert [p.offset for p in history.publications] == [4, 5]


async def test_expired_keys_are_removed_once_as_removals(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    await node.broker.subscribe(ch)
    await node.store.set(ch, b"1", keyed("short"), 0.3)
    await node.store.set(ch, b"2", keyed("long"), 60)
    not_yet = await node.store.remove(ch, keyed("short", removed=True), expired_only=True)
    assert not_yet.suppressed, "a key that has not expired is not removed by the expiry round"
    found = await wait_until(lambda: node.store.expired(100), timeout=5)
    assert (ch, "short") in found and (ch, "long") not in found
    first = await node.store.remove(ch, keyed("short", removed=True), expired_only=True)
    second = await node.store.remove(ch, keyed("short", removed=True), expired_only=True)
    assert not first.suppressed and second.suppressed
    await wait_until(lambda: any(p.removed for _, p, _ in node.recorder.publications))
    assert [(p.key, p.removed) for c, p, _ in node.recorder.publications if c == ch] == \
        [("short", False), ("long", False), ("short", True)]
    assert (ch, "short") not in await node.store.expired(100)


async def test_clear_drops_the_state(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    await node.store.set(ch, b"1", keyed("a"), 0)
    await node.store.clear(ch)
    assert await node.store.count(ch) == 0
    assert await node.store.page(ch, "", 10) == ([], "")


@pytest.mark.parametrize("nodes", SHARED, indirect=True)
async def test_another_node_receives_changes_in_order(nodes: NodeFactory) -> None:
    writer, reader = await nodes(), await nodes()
    ch = "m:" + uuid.uuid4().hex
    await reader.broker.subscribe(ch)
    for i in range(20):
        await writer.store.set(ch, b"%d" % i, keyed(f"k{i % 3}"), 0)
    await writer.store.remove(ch, keyed("k0", removed=True))
    await wait_until(lambda: len(reader.recorder.publications) >= 21)
    got = [(p.offset, p.key, p.removed) for c, p, _ in reader.recorder.publications if c == ch]
    assert got == [(i + 1, f"k{i % 3}", False) for i in range(20)] + [(21, "k0", True)]
    entries, _ = await reader.store.page(ch, "", 10)
    assert [(k, e.data) for k, e in entries] == [("k1", b"19"), ("k2", b"17")]
    await reader.broker.unsubscribe(ch)
    await writer.store.set(ch, b"late", keyed("k1"), 0)
    await wait_until(lambda: writer.store.count(ch))  # a channel nobody subscribes to on the reader
    assert len([1 for c, _, _ in reader.recorder.publications if c == ch]) == 21


async def test_removed_history_stays_removed(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    for i in range(3):
        await node.store.set(ch, b"%d" % i, keyed("k"), 0)
    await node.broker.remove_history(ch)
    after = await node.broker.history(ch, HistoryOptions(limit=-1, history_meta_ttl=3600))
    assert after.publications == () and after.position.offset == 3, "the position stays"
    await node.store.set(ch, b"3", keyed("k"), 0)
    history = await node.broker.history(ch, HistoryOptions(limit=-1, history_meta_ttl=3600))
    assert [p.offset for p in history.publications] == [4], "changes before the removal do not come back"
    assert await node.store.count(ch) == 1, "the state is not the stream: it stays"


@pytest.mark.parametrize("nodes", SHARED, indirect=True)
async def test_concurrent_writers_are_delivered_in_offset_order(nodes: NodeFactory) -> None:
    """Two nodes write the same channels at once: every reader gets each channel's changes exactly once, in
    offset order without gaps (a late commit is never skipped by a reader that moved on)."""
    a, b, reader = await nodes(), await nodes(), await nodes()
    channels = ["m:" + uuid.uuid4().hex for _ in range(3)]
    await reader.broker.subscribe(*channels)

    async def write(node: Node, tag: str) -> None:
        for i in range(15):
            await asyncio.gather(*(node.store.set(ch, b"%s%d" % (tag.encode(), i), keyed(f"{tag}{i % 4}"), 0)
                                   for ch in channels))

    await asyncio.gather(write(a, "a"), write(b, "b"))
    await wait_until(lambda: len(reader.recorder.publications) >= 90)
    for ch in channels:
        offsets = [p.offset for c, p, _ in reader.recorder.publications if c == ch]
        assert offsets == list(range(1, 31)), ch


async def test_key_modes_change_nothing_when_they_do_not_hold(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    await node.broker.subscribe(ch)
    missing = await node.store.set(ch, b'"u"', keyed("k"), 0, Conditions(key_mode="if_exists"))
    assert (missing.suppressed, missing.suppress_reason) == (True, "key_not_found")
    first = await node.store.set(ch, b'"a"', keyed("k"), 0, Conditions(key_mode="if_new"))
    taken = await node.store.set(ch, b'"b"', keyed("k"), 0, Conditions(key_mode="if_new"))
    assert not first.suppressed and (taken.suppressed, taken.suppress_reason) == (True, "key_exists")
    updated = await node.store.set(ch, b'"c"', keyed("k"), 0, Conditions(key_mode="if_exists"))
    assert not updated.suppressed and updated.position.offset == first.position.offset + 1
    await wait_until(lambda: len([1 for c, _, _ in node.recorder.publications if c == ch]) >= 2)
    assert [p.data for c, p, _ in node.recorder.publications if c == ch] == [b'"a"', b'"c"']
    assert [(k, e.data) for k, e in (await node.store.page(ch, "", 10))[0]] == [("k", b'"c"')]


async def test_versions_and_idempotency_keys(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex

    async def reason(data: bytes, version: int = 0, epoch: str = "", idempotency_key: str = "") -> str:
        opts = dataclasses.replace(keyed("k"), idempotency_key=idempotency_key)
        result = await node.store.set(ch, data, opts, 0, Conditions(version=version, version_epoch=epoch))
        return result.suppress_reason if result.suppressed else "ok"

    assert [await reason(b'"1"', 3), await reason(b'"2"', 2), await reason(b'"3"', 3), await reason(b'"4"'),
            await reason(b'"5"', 3), await reason(b'"6"', 1, "e2"), await reason(b'"7"', idempotency_key="x"),
            await reason(b'"8"', idempotency_key="x")] == [
        "ok", "version", "version", "ok", "version", "ok", "ok", "idempotency"]
    assert [e.data for _, e in (await node.store.page(ch, "", 10))[0]] == [b'"7"']
    removal = dataclasses.replace(keyed("k", removed=True), idempotency_key="rm")
    assert not (await node.store.remove(ch, removal)).suppressed
    again = await node.store.remove(ch, removal)
    assert (again.suppressed, again.suppress_reason) == (True, "idempotency")
    assert await reason(b'"9"', 1) == "ok", "a removed key forgets its version"


async def test_a_suppressed_write_answers_the_streams_position(node: Node) -> None:
    """Every backend answers a write that changed nothing as Centrifugo's do: the channel's current position
    (an idempotent replay: its first write's), and the same reason for the same condition."""
    ch = "m:" + uuid.uuid4().hex
    first = await node.store.set(ch, b'"a"', dataclasses.replace(keyed("k"), idempotency_key="i"), 0,
                                 Conditions(version=5))
    top = (await node.store.set(ch, b'"b"', keyed("j"), 0)).position
    results = [await node.store.set(ch, b'"c"', keyed("k"), 0, Conditions(key_mode="if_exists", version=4)),
               await node.store.set(ch, b'"c"', keyed("k"), 0, Conditions(key_mode="if_new", version=6)),
               await node.store.set(ch, b'"c"', keyed("x"), 0, Conditions(key_mode="if_exists")),
               await node.store.remove(ch, keyed("x", removed=True)),
               await node.store.set(ch, b'"c"', dataclasses.replace(keyed("x"), idempotency_key="i"), 0,
                                    Conditions(key_mode="if_exists"))]
    assert [(r.suppressed, r.suppress_reason, r.position) for r in results] == [
        (True, "version", top), (True, "key_exists", top), (True, "key_not_found", top),
        (True, "key_not_found", top), (True, "idempotency", first.position)]
    assert top.offset == first.position.offset + 1 and top.epoch == first.position.epoch


async def test_a_keys_delta_base_is_its_own_previous_value(node: Node) -> None:
    """What a node's subscription receives (through Redis PUB/SUB on the Redis backends)."""
    writer = reader = node
    ch = "m:" + uuid.uuid4().hex
    await reader.broker.subscribe(ch)
    delta = dataclasses.replace(keyed("a"), use_delta=True)
    await writer.store.set(ch, b'"a1"', delta, 0)
    await writer.store.set(ch, b'"b1"', dataclasses.replace(delta, key="b"), 0)
    await writer.store.set(ch, b'"a2"', delta, 0)
    await writer.store.remove(ch, keyed("a", removed=True))
    await writer.store.set(ch, b'"a3"', delta, 0)
    await wait_until(lambda: len([1 for c, _, _ in reader.recorder.publications if c == ch]) >= 5)
    got = [(p.key, p.data, p.prev_data, p.removed) for c, p, _ in reader.recorder.publications if c == ch]
    # a2's base is a1 (not b1, the channel's previous publication); after its removal a3 has none.
    assert got == [("a", b'"a1"', None, False), ("b", b'"b1"', None, False), ("a", b'"a2"', b'"a1"', False),
                   ("a", b"", None, True), ("a", b'"a3"', None, False)]


async def test_a_removal_carries_the_entrys_tags(node: Node) -> None:
    ch = "m:" + uuid.uuid4().hex
    await node.broker.subscribe(ch)
    await node.store.set(ch, b'"v"', dataclasses.replace(keyed("k"), tags={"team": "eng"}), 0)
    await node.store.remove(ch, keyed("k", removed=True))
    await wait_until(lambda: len([1 for c, _, _ in node.recorder.publications if c == ch]) >= 2)
    assert [(p.removed, p.tags) for c, p, _ in node.recorder.publications if c == ch] == [
        (False, {"team": "eng"}), (True, {"team": "eng"})]


async def test_a_refused_write_on_a_new_channel_starts_its_stream_and_a_refused_removal_does_not(node: Node) -> None:
    """As Centrifugo's brokers: a refused publish on a channel never written to creates its stream meta (a new
    epoch at offset 0, which the next write continues); its memory and PostgreSQL brokers answer a refused
    removal there with offset 0 and no epoch, creating nothing."""
    ch = "m:" + uuid.uuid4().hex
    refused = await node.store.set(ch, b'"a"', keyed("k"), 0, Conditions(key_mode="if_exists"))
    assert (refused.suppressed, refused.suppress_reason, refused.position.offset) == (True, "key_not_found", 0)
    assert refused.position.epoch, "a refused publish starts the stream: a new epoch"
    written = await node.store.set(ch, b'"a"', keyed("k"), 0)
    assert written.position == StreamPosition(1, refused.position.epoch)
    other = "m:" + uuid.uuid4().hex
    for expired_only in (False, True):
        removal = await node.store.remove(other, keyed("k", removed=True), expired_only=expired_only)
        assert (removal.suppressed, removal.suppress_reason, removal.position) == \
            (True, "key_not_found", StreamPosition(0, "")), expired_only


async def test_a_key_past_its_ttl_is_there_until_its_removal_is_announced(node: Node) -> None:
    """Until the cleanup round announces its removal, an expired key is still there (Centrifugo's memory, Redis
    and PostgreSQL brokers check physical existence): key modes and versions see it, state pages list it, and a
    touch keeps it (no removal announced)."""
    ch = "m:" + uuid.uuid4().hex
    await node.broker.subscribe(ch)
    await node.store.set(ch, b'"a"', keyed("k"), 0.2, Conditions(version=5))

    async def expired() -> bool:
        return (ch, "k") in await node.store.expired(100)

    await wait_until(expired, timeout=5, what="the key past its TTL")
    taken = await node.store.set(ch, b'"b"', keyed("k"), 60, Conditions(key_mode="if_new"))
    stale = await node.store.set(ch, b'"b"', keyed("k"), 60, Conditions(version=5))
    assert [(r.suppressed, r.suppress_reason) for r in (taken, stale)] == [(True, "key_exists"), (True, "version")]
    assert [(k, e.data) for k, e in (await node.store.page(ch, "", 10))[0]] == [("k", b'"a"')]
    assert await node.store.count(ch) == 1
    assert await node.store.touch(ch, "k", 60)
    assert (ch, "k") not in await node.store.expired(100)
    assert (await node.store.remove(ch, keyed("k", removed=True), expired_only=True)).suppressed
    updated = await node.store.set(ch, b'"c"', keyed("k"), 60, Conditions(key_mode="if_exists"))
    assert not updated.suppressed
    await wait_until(lambda: len([1 for c, _, _ in node.recorder.publications if c == ch]) >= 2)
    assert [(p.data, p.removed) for c, p, _ in node.recorder.publications if c == ch] == [
        (b'"a"', False), (b'"c"', False)]
