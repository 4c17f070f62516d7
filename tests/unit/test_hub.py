"""The hub and the client queue with a fake transport: encode-once fan-out, batching, slow-consumer cut-off."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import orjson
import pytest
from centrifuge.fossil import apply_delta
from fakes import END, FakeTransport
from harness import wait_until

from node import writer as writer_module
from node.client import Client
from node.config import ClientConfig, Config
from node.errors import DISCONNECT_SLOW, DISCONNECT_WRITE_ERROR
from node.models import ClientInfo, Publication, RequestInfo, StreamPosition, SubscribeOptions
from node.protocol import client_pb2, proto
from node.protocol.proto import split_delimited
from node.server import build_node
from node.tagsfilter import TagsFilter
from node.writer import FLUSH_HOPS


def make_node(**client_opts: object) -> object:
    cfg = Config(client=dataclasses.replace(ClientConfig(), **client_opts))  # type: ignore[arg-type]
    return build_node(cfg)


def live_sub(node: object, channel: str, client: Client, **opts: bool) -> None:
    """Subscribe and end the set-up buffering at once (what the node does right after the reply)."""
    node.subscriptions.add(channel, client, **opts)  # type: ignore[attr-defined]
    node.hub.release(channel, client, None)  # type: ignore[attr-defined]


async def tick() -> None:
    """Let the pending flush run (it waits up to FLUSH_HOPS loop iterations)."""
    for _ in range(FLUSH_HOPS + 1):
        await asyncio.sleep(0)


async def iterate_until(done: Callable[[], bool], limit: int = 1000) -> None:
    """Run the loop one iteration at a time until ``done()`` (so a test sees the state between two flush slices)."""
    for _ in range(limit):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not done after {limit} loop iterations")


def new_client(node: object, *, unidirectional: bool = False, user: str = "u",
               transport_type: type[FakeTransport] = FakeTransport) -> tuple[Client, FakeTransport]:
    transport = transport_type(unidirectional=unidirectional)
    client = Client(node, transport, RequestInfo(transport="fake"))  # type: ignore[arg-type]
    client.user = user
    return client, transport


async def test_broadcast_encodes_once_and_shares_bytes() -> None:
    node = make_node()
    clients = [new_client(node) for _ in range(3)]
    for c, _ in clients:
        live_sub(node, "ch", c)
    node.hub.broadcast_publication("ch", Publication(b'{"a":1}', offset=7), StreamPosition(7, "e"))  # type: ignore[attr-defined]
    await tick()
    writes = [t.writes for _, t in clients]
    assert all(len(w) == 1 for w in writes)
    assert writes[0][0] is writes[1][0] is writes[2][0], "every subscriber must get the same framed bytes object"
    message = orjson.loads(clients[0][1].messages[0])
    assert message == {"push": {"channel": "ch", "pub": {"data": {"a": 1}, "offset": 7}}}
    for c, _ in clients:
        c.transport = FakeTransport()  # detach before close
        await c.close(DISCONNECT_SLOW)


async def test_unidirectional_subscribers_get_bare_push() -> None:
    node = make_node()
    bidi, bt = new_client(node)
    uni, ut = new_client(node, unidirectional=True)
    live_sub(node, "ch", bidi)
    live_sub(node, "ch", uni)
    node.hub.broadcast_publication("ch", Publication(b"1"), StreamPosition())  # type: ignore[attr-defined]
    await tick()
    assert orjson.loads(bt.messages[0]) == {"push": {"channel": "ch", "pub": {"data": 1}}}
    assert orjson.loads(ut.messages[0]) == {"channel": "ch", "pub": {"data": 1}}


async def test_join_leave_only_to_subscribers_that_asked() -> None:
    node = make_node()
    asked, at = new_client(node)
    silent, st = new_client(node)
    live_sub(node, "ch", asked, push_join_leave=True)
    live_sub(node, "ch", silent)
    node.hub.broadcast_join("ch", ClientInfo("c1", "u1"))  # type: ignore[attr-defined]
    node.hub.broadcast_leave("ch", ClientInfo("c1", "u1"))  # type: ignore[attr-defined]
    await tick()
    kinds = [next(iter(orjson.loads(m)["push"].keys() - {"channel"})) for m in at.messages]
    assert kinds == ["join", "leave"]
    assert st.writes == []


async def test_messages_of_one_tick_leave_in_one_write() -> None:
    node = make_node()
    client, transport = new_client(node)
    for i in range(20):
        client.enqueue(b'{"n":%d}' % i)
    assert transport.writes == [], "nothing is written before the loop tick ends"
    await asyncio.sleep(0)
    assert transport.writes == [], "the flush waits a few iterations for more messages"
    await tick()
    assert len(transport.writes) == 1, "one transport write per tick"
    assert [orjson.loads(m)["n"] for m in transport.messages] == list(range(20))
    client.enqueue(b'{"n":20}')
    await tick()
    assert len(transport.writes) == 2, "the queue is reused for the next tick"
    assert [orjson.loads(m)["n"] for m in transport.messages] == list(range(21))


async def test_publications_during_a_flush_join_the_writes_still_to_come(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush writes a slice of clients and lets the loop run before the rest: a publication handled in between
    reaches the clients not yet written in the same write() as the one before it, and the clients already
    written get it in a second round. Order per client is kept either way."""
    monkeypatch.setattr(writer_module, "FLUSH_SLICE", 0.0)  # a slice is then the 8 clients between time checks
    node = make_node()
    clients = [new_client(node) for _ in range(32)]
    for c, _ in clients:
        live_sub(node, "ch", c)
    hub = node.hub  # type: ignore[attr-defined]
    hub.broadcast_publication("ch", Publication(b'{"n":1}'), StreamPosition())
    transports = [t for _, t in clients]
    await iterate_until(lambda: any(t.writes for t in transports))
    assert sum(1 for t in transports if t.writes) == 8, "one slice is written, then the loop runs"
    hub.broadcast_publication("ch", Publication(b'{"n":2}'), StreamPosition())
    await iterate_until(lambda: all(len(t.messages) == 2 for t in transports))
    await tick()
    early = [t for t in transports if len(t.writes) == 2]
    late = [t for t in transports if len(t.writes) == 1]
    assert len(early) == 8 and len(late) == 24, "the rest of the round carries both publications in one write"
    for t in transports:
        assert [orjson.loads(m)["push"]["pub"]["data"]["n"] for m in t.messages] == [1, 2]


async def test_subscriptions_count_first_and_last_subscriber() -> None:
    node = make_node()
    a, _ = new_client(node)
    b, _ = new_client(node)
    subs = node.subscriptions  # type: ignore[attr-defined]
    assert subs.add("ch", a) is True
    assert subs.add("ch", b) is False
    assert subs.num_subscribers("ch") == 2
    assert subs.remove("ch", a) is False
    assert subs.remove("ch", b) is True
    assert subs.num_channels() == 0


async def test_slow_consumer_is_disconnected_when_the_socket_does_not_drain() -> None:
    node = make_node(queue_max_size=1000)
    slow, st = new_client(node)
    fast, ft = new_client(node)
    live_sub(node, "ch", slow)
    live_sub(node, "ch", fast)
    st.buffer = 990  # the kernel has not taken these bytes: the peer is not reading
    payload = b'"' + b"x" * 100 + b'"'
    for _ in range(3):
        node.hub.broadcast_publication("ch", Publication(payload), StreamPosition())  # type: ignore[attr-defined]
        await tick()
    await tick()
    assert st.closed_with == DISCONNECT_SLOW
    assert ft.closed_with is None
    assert len(ft.messages) == 3, "the fast client still gets everything"


async def test_a_burst_over_the_queue_limit_within_one_tick_disconnects() -> None:
    node = make_node(queue_max_size=1000)
    client, transport = new_client(node)
    for _ in range(20):
        client.enqueue(b'"' + b"x" * 100 + b'"')
    await tick()
    await tick()
    assert transport.closed_with == DISCONNECT_SLOW
    assert transport.writes == [], "queued bytes of a slow client are dropped, not written"


def pub(offset: int, data: bytes = b"1", *, prev: bytes | None = None) -> Publication:
    return Publication(data, offset=offset, delta=prev is not None, prev_data=prev)


async def test_buffered_publications_are_released_after_the_position_without_duplicates() -> None:
    node = make_node()
    client, transport = new_client(node)
    node.subscriptions.add("ch", client, positioned=True)  # type: ignore[attr-defined]
    for offset in (4, 5, 6):  # arrive while the subscribe reply is being prepared
        node.hub.broadcast_publication("ch", pub(offset), StreamPosition(offset, "e"))  # type: ignore[attr-defined]
    await tick()
    assert transport.writes == [], "nothing is delivered before the reply"
    client.enqueue(b'{"id":1,"subscribe":{}}')
    node.hub.release("ch", client, StreamPosition(4, "e"))  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", pub(7), StreamPosition(7, "e"))  # type: ignore[attr-defined]
    await tick()
    messages = [orjson.loads(m) for m in transport.messages]
    assert messages[0] == {"id": 1, "subscribe": {}}
    assert [m["push"]["pub"]["offset"] for m in messages[1:]] == [5, 6, 7]


async def test_a_gap_unsubscribes_the_positioned_client_with_2500() -> None:
    node = make_node()
    client, transport = new_client(node)
    await node.subscribe_client(client, "ch", SubscribeOptions(enable_positioning=True),  # type: ignore[attr-defined]
                                server_side=False)
    node.hub.release("ch", client, StreamPosition(10, "e"))  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", pub(11), StreamPosition(11, "e"))  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", pub(11), StreamPosition(11, "e"))  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", pub(13), StreamPosition(13, "e"))  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", pub(14), StreamPosition(14, "e"))  # type: ignore[attr-defined]
    for _ in range(4):
        await tick()
    messages = [orjson.loads(m)["push"] for m in transport.messages]
    assert messages[0]["pub"]["offset"] == 11, "the duplicate 11 is dropped"
    assert messages[1] == {"channel": "ch", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}
    assert len(messages) == 2, "nothing after the gap"
    assert "ch" not in client.channels


class WsTextFake(FakeTransport):
    framing = "ws-text"  # the common framing: its plain subscribers take the fan-out's shared lanes


async def test_positioned_subscribers_in_step_share_the_frame_and_drop_what_they_have() -> None:
    node = make_node()
    clients = [new_client(node, transport_type=WsTextFake) for _ in range(3)]
    for (client, _), at in zip(clients, (10, 10, 12), strict=True):
        await node.subscribe_client(client, "ch", SubscribeOptions(enable_positioning=True),  # type: ignore[attr-defined]
                                    server_side=False)
        node.hub.release("ch", client, StreamPosition(at, "e"))  # type: ignore[attr-defined]
    writes: list[list[bytes]] = [[] for _ in clients]
    for offset in (11, 12, 13, 13, 14):  # the third subscriber already has 11 and 12; 13 comes twice
        node.hub.broadcast_publication("ch", pub(offset), StreamPosition(offset, "e"))  # type: ignore[attr-defined]
        await tick()
        for got, (_, transport) in zip(writes, clients, strict=True):
            got.extend(transport.writes)
            transport.writes.clear()
    offsets = [[orjson.loads(w.removesuffix(END))["push"]["pub"]["offset"] for w in got] for got in writes]
    assert offsets == [[11, 12, 13, 14], [11, 12, 13, 14], [13, 14]]
    assert writes[0][3] is writes[1][3] is writes[2][1], "subscribers in step get the same framed bytes object"
    positions = {node.subscriptions.position("ch", c) for c, _ in clients}  # type: ignore[attr-defined]
    assert positions == {StreamPosition(14, "e")}
    # A gap breaks every subscriber in step; a new epoch breaks a subscriber on a cursor of its own.
    late_sub = new_client(node, transport_type=WsTextFake)
    late = late_sub[0]
    await node.subscribe_client(late, "ch", SubscribeOptions(enable_positioning=True),  # type: ignore[attr-defined]
                                server_side=False)
    node.hub.release("ch", late, StreamPosition(15, "e"))  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", pub(16), StreamPosition(16, "f"))  # type: ignore[attr-defined]
    await tick()
    for client, transport in [*clients, late_sub]:
        messages = [orjson.loads(m) for w in transport.writes for m in w.split(END) if m]
        assert messages == [{"push": {"channel": "ch", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}}]
        assert "ch" not in client.channels


async def test_delta_subscribers_get_a_full_string_then_patches() -> None:
    node = make_node()
    client, transport = new_client(node)
    node.subscriptions.add("ch", client, positioned=True, delta=True)  # type: ignore[attr-defined]
    node.hub.release("ch", client, StreamPosition(0, "e"))  # type: ignore[attr-defined]
    plain, pt = new_client(node)
    live_sub(node, "ch", plain)
    first = b'{"items":[' + b",".join(b'{"id":%d,"v":"value"}' % i for i in range(50)) + b"]}"
    second = first.replace(b'"id":25,"v":"value"', b'"id":25,"v":"other"')
    node.hub.broadcast_publication("ch", pub(1, first), StreamPosition(1, "e"))  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", pub(2, second, prev=first), StreamPosition(2, "e"))  # type: ignore[attr-defined]
    await tick()
    full, patch = (orjson.loads(m)["push"]["pub"] for m in transport.messages)
    assert "delta" not in full and full["data"] == first.decode()
    assert patch["delta"] is True and len(patch["data"]) < len(second) / 4
    assert bytes(apply_delta(first, patch["data"].encode())) == second
    plain_pubs = [orjson.loads(m)["push"]["pub"] for m in pt.messages]
    assert [p["data"]["items"][25]["v"] for p in plain_pubs] == ["value", "other"], "plain subscribers get JSON"


async def test_write_delay_collects_messages_of_several_ticks_into_one_write() -> None:
    node = make_node(write_delay=0.05)
    client, transport = new_client(node)
    client.enqueue(b'{"n":0}')
    await tick()
    client.enqueue(b'{"n":1}')
    await tick()
    assert transport.writes == [], "write_delay holds the first message back"
    await wait_until(lambda: transport.writes, timeout=5, what="the delayed write")
    assert len(transport.writes) == 1
    assert [orjson.loads(m)["n"] for m in transport.messages] == [0, 1]


async def test_a_busy_loop_gives_the_flush_as_long_a_slice_as_the_other_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Request handling between two slices must not starve the writes: the next slice lasts as long as the loop
    was busy elsewhere, so many publishers cannot grow the queues until healthy clients are cut as slow."""
    monkeypatch.setattr(writer_module, "FLUSH_SLICE", 0.0)  # a slice is then the 8 clients between time checks
    node = make_node()
    clients = [new_client(node) for _ in range(64)]
    for c, _ in clients:
        c.enqueue(b'{"n":0}')
    transports = [t for _, t in clients]
    await iterate_until(lambda: any(t.writes for t in transports))
    assert sum(1 for t in transports if t.writes) == 8
    time.sleep(0.02)  # noqa: ASYNC251 -- the point: other work holding the loop, as a burst of requests does
    await asyncio.sleep(0)
    assert all(t.writes for t in transports), "the slice after 20 ms of other work writes the whole rest"


async def test_write_delay_also_holds_the_round_after_a_sliced_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client queued again while a round is being written waits for the next round, and with write_delay that
    round starts only after the delay, as the first one did."""
    monkeypatch.setattr(writer_module, "FLUSH_SLICE", 0.0)  # a slice is then the 8 clients between time checks
    node = make_node(write_delay=0.05)
    clients = [new_client(node) for _ in range(16)]
    for c, _ in clients:
        c.enqueue(b'{"n":0}')
    transports = [t for _, t in clients]
    await iterate_until(lambda: any(t.writes for t in transports), limit=100_000)
    first = next(c for c, t in clients if t.writes)
    first.enqueue(b'{"n":1}')
    await iterate_until(lambda: all(t.writes for t in transports))
    await tick()
    assert len(first.transport.writes) == 1, "the next round waits for write_delay"  # type: ignore[attr-defined]
    await wait_until(lambda: len(first.transport.writes) == 2, timeout=5,  # type: ignore[attr-defined]
                     what="the next round, after write_delay")
    assert [orjson.loads(m)["n"] for m in first.transport.messages] == [0, 1]  # type: ignore[attr-defined]


class ProtobufFake(FakeTransport):
    """A fake transport speaking protobuf: each message a varint-delimited Reply (no NUL terminator)."""

    protocol = "protobuf"
    framing = "fake-protobuf"

    @staticmethod
    def frame(message: bytes) -> bytes:
        return proto.delimit(message)


async def test_broadcast_builds_one_frame_per_framing_for_json_and_protobuf_subscribers() -> None:
    node = make_node()
    json_clients = [new_client(node) for _ in range(2)]
    pb_clients = []
    for _ in range(2):
        transport = ProtobufFake()
        client = Client(node, transport, RequestInfo(transport="fake"))  # type: ignore[arg-type]
        pb_clients.append((client, transport))
    for c, _ in json_clients + pb_clients:
        live_sub(node, "ch", c)
    node.hub.broadcast_publication("ch", Publication(b'{"a":1}', offset=3), StreamPosition(3, "e"))  # type: ignore[attr-defined]
    await tick()
    (j0,), (j1,) = (t.writes for _, t in json_clients)
    (p0,), (p1,) = (t.writes for _, t in pb_clients)
    assert j0 is j1 and p0 is p1, "one shared frame per framing"
    (chunk,) = split_delimited(p0)
    reply = client_pb2.Reply()
    reply.ParseFromString(chunk)
    assert (reply.push.channel, reply.push.pub.data, reply.push.pub.offset) == ("ch", b'{"a":1}', 3)
    assert orjson.loads(json_clients[0][1].messages[0])["push"]["pub"] == {"data": {"a": 1}, "offset": 3}


async def test_binary_payload_goes_to_protobuf_clients_and_closes_json_clients_with_3506() -> None:
    node = make_node()
    json_client, jt = new_client(node)
    transport = ProtobufFake()
    pb_client = Client(node, transport, RequestInfo(transport="fake"))  # type: ignore[arg-type]
    live_sub(node, "ch", json_client)
    live_sub(node, "ch", pb_client)
    node.hub.broadcast_publication("ch", Publication(b"\x00\xffbinary"), StreamPosition())  # type: ignore[attr-defined]
    await tick()
    await tick()
    assert jt.writes == [] and jt.closed_with is not None and jt.closed_with.code == 3506
    (chunk,) = split_delimited(transport.writes[0])
    reply = client_pb2.Reply()
    reply.ParseFromString(chunk)
    assert reply.push.pub.data == b"\x00\xffbinary"
    assert transport.closed_with is None


async def test_user_index_with_one_and_several_connections() -> None:
    node = make_node()
    hub = node.hub  # type: ignore[attr-defined]
    a, _ = new_client(node, user="alice")
    b, _ = new_client(node, user="alice")
    c, _ = new_client(node, user="carol")
    for client in (a, b, c):
        hub.add(client)
    hub.add(a)  # adding twice changes nothing
    assert (hub.num_users(), hub.num_clients()) == (2, 3)
    assert sorted(x.id for x in hub.user_clients("alice")) == sorted([a.id, b.id])
    assert hub.num_user_connections("alice") == 2 and hub.num_user_connections("carol") == 1
    hub.remove(a)
    assert hub.user_clients("alice") == (b,) and hub.num_user_connections("alice") == 1
    hub.remove(b)
    hub.remove(c)
    assert (hub.num_users(), hub.num_clients(), hub.user_clients("alice"), hub.num_user_connections("bob")) == (
        0, 0, (), 0)


async def test_a_websocket_that_does_not_drain_within_write_timeout_is_closed_with_3009() -> None:
    cfg = Config(websocket=dataclasses.replace(Config().websocket, write_timeout=0.1))
    node = build_node(cfg)
    stuck, st = new_client(node)
    draining, dt = new_client(node)
    for transport in (st, dt):
        transport.name = "websocket"  # the timeout is the WebSocket's, as in Centrifugo
    st.buffer = 10  # bytes the kernel never takes
    for _ in range(2):
        stuck.enqueue(b"{}")
        draining.enqueue(b"{}")
        await tick()
        dt.buffer = 10 if dt.buffer == 0 else 0  # the other socket drains between writes
        await asyncio.sleep(0.15)
    stuck.enqueue(b"{}")
    await tick()
    await tick()
    assert st.closed_with is not None and st.closed_with.code == 3009
    assert dt.closed_with is None


class BrokenTransport(FakeTransport):
    def write(self, data: bytes) -> None:
        raise RuntimeError("the transport refuses writes")


async def test_a_transport_that_raises_is_closed_and_the_others_still_get_the_round() -> None:
    node = make_node()
    clients = [new_client(node) for _ in range(3)]
    broken = clients[1][0]
    broken.transport = BrokenTransport()
    for c, _ in clients:
        live_sub(node, "ch", c)
    hub = node.hub  # type: ignore[attr-defined]
    hub.broadcast_publication("ch", Publication(b'{"n":1}'), StreamPosition())
    await tick()
    await iterate_until(lambda: broken.transport.closed_with is not None)  # type: ignore[attr-defined]
    assert broken.transport.closed_with.code == DISCONNECT_WRITE_ERROR.code  # type: ignore[attr-defined]
    hub.broadcast_publication("ch", Publication(b'{"n":2}'), StreamPosition())
    await tick()
    for _, t in (clients[0], clients[2]):
        assert [orjson.loads(m)["push"]["pub"]["data"]["n"] for m in t.messages] == [1, 2], "later flushes go on"


async def test_a_delta_subscriber_with_a_tags_filter_gets_every_live_publication_as_centrifuge_sends_them() -> None:
    """centrifuge skips a filtered publication only for a subscriber without delta (client.go writePublication:
    ``wasFiltered && !deltaSub``): a delta subscriber's patches chain through every value, in either protocol."""
    node = make_node()
    tech = TagsFilter({"key": "sector", "cmp": "eq", "val": "tech"})
    json_delta, jt = new_client(node)
    pb_transport = ProtobufFake()
    pb_delta = Client(node, pb_transport, RequestInfo(transport="fake"))  # type: ignore[arg-type]
    filtered, ft = new_client(node)
    for c, delta in ((json_delta, True), (pb_delta, True), (filtered, False)):
        node.subscriptions.add("ch", c, positioned=True, delta=delta, tags_filter=tech)  # type: ignore[attr-defined]
        node.hub.release("ch", c, StreamPosition(0, "e"))  # type: ignore[attr-defined]
    docs = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * 300) for n in range(3)]
    for offset, (doc, sector) in enumerate(zip(docs, ["tech", "energy", "tech"], strict=True), start=1):
        prev = docs[offset - 2] if offset > 1 else None
        p = dataclasses.replace(pub(offset, doc, prev=prev), tags={"sector": sector})
        node.hub.broadcast_publication("ch", p, StreamPosition(offset, "e"))  # type: ignore[attr-defined]
    await tick()
    assert [orjson.loads(m)["push"]["pub"]["offset"] for m in ft.messages] == [1, 3], "no delta: filtered"
    json_pubs = [orjson.loads(m)["push"]["pub"] for m in jt.messages]
    pb_pubs = []
    for chunk in split_delimited(b"".join(pb_transport.writes)):
        reply = client_pb2.Reply()
        reply.ParseFromString(chunk)
        pb_pubs.append(reply.push.pub)
    for got in ([(p["offset"], p.get("delta", False), p["data"].encode()) for p in json_pubs],
                [(p.offset, p.delta, p.data) for p in pb_pubs]):
        assert [offset for offset, _, _ in got] == [1, 2, 3]
        assert [delta for _, delta, _ in got] == [False, True, True]
        value = b""
        values = []
        for _, delta, data in got:
            value = bytes(apply_delta(value, data)) if delta else data
            values.append(value)
        assert values == docs
