"""The hub and the client queue with a fake transport: encode-once fan-out, batching, slow-consumer cut-off."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
from fakes import FakeTransport

from node.client import Client
from node.config import ClientConfig, Config
from node.errors import DISCONNECT_SLOW
from node.models import ClientInfo, Publication, RequestInfo, StreamPosition
from node.server import build_node


def make_node(**client_opts: object) -> object:
    cfg = Config(client=dataclasses.replace(ClientConfig(), **client_opts))  # type: ignore[arg-type]
    return build_node(cfg)


async def tick() -> None:
    """Let call_soon callbacks (the per-tick flush) run."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def new_client(node: object, *, unidirectional: bool = False, user: str = "u") -> tuple[Client, FakeTransport]:
    transport = FakeTransport(unidirectional=unidirectional)
    client = Client(node, transport, RequestInfo(transport="fake"))  # type: ignore[arg-type]
    client.user = user
    return client, transport


async def test_broadcast_encodes_once_and_shares_bytes() -> None:
    node = make_node()
    clients = [new_client(node) for _ in range(3)]
    for c, _ in clients:
        node.hub.add_sub("ch", c)  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", Publication(b'{"a":1}', offset=7), StreamPosition(7, "e"))  # type: ignore[attr-defined]
    await tick()
    frames = [t.frames for _, t in clients]
    assert all(len(f) == 1 for f in frames)
    assert frames[0][0] is frames[1][0] is frames[2][0], "every subscriber must get the same bytes object"
    assert orjson.loads(frames[0][0]) == {"push": {"channel": "ch", "pub": {"data": {"a": 1}, "offset": 7}}}
    for c, _ in clients:
        c.transport = FakeTransport()  # detach before close
        await c.close(DISCONNECT_SLOW)


async def test_unidirectional_subscribers_get_bare_push() -> None:
    node = make_node()
    bidi, bt = new_client(node)
    uni, ut = new_client(node, unidirectional=True)
    node.hub.add_sub("ch", bidi)  # type: ignore[attr-defined]
    node.hub.add_sub("ch", uni)  # type: ignore[attr-defined]
    node.hub.broadcast_publication("ch", Publication(b"1"), StreamPosition())  # type: ignore[attr-defined]
    await tick()
    assert orjson.loads(bt.frames[0]) == {"push": {"channel": "ch", "pub": {"data": 1}}}
    assert orjson.loads(ut.frames[0]) == {"channel": "ch", "pub": {"data": 1}}


async def test_join_leave_only_to_subscribers_that_asked() -> None:
    node = make_node()
    asked, at = new_client(node)
    silent, st = new_client(node)
    node.hub.add_sub("ch", asked, push_join_leave=True)  # type: ignore[attr-defined]
    node.hub.add_sub("ch", silent)  # type: ignore[attr-defined]
    node.hub.broadcast_join("ch", ClientInfo("c1", "u1"))  # type: ignore[attr-defined]
    node.hub.broadcast_leave("ch", ClientInfo("c1", "u1"))  # type: ignore[attr-defined]
    await tick()
    kinds = [next(iter(orjson.loads(m)["push"].keys() - {"channel"})) for m in at.messages]
    assert kinds == ["join", "leave"]
    assert st.frames == []


async def test_messages_of_one_tick_leave_in_one_write_batched_per_frame() -> None:
    node = make_node(max_messages_in_frame=16)
    client, transport = new_client(node)
    for i in range(20):
        client.enqueue(b'{"n":%d}' % i)
    assert transport.writes == [], "nothing is written before the loop tick ends"
    await tick()
    assert len(transport.writes) == 1, "one transport write per tick"
    assert [len(f.split(b"\n")) for f in transport.writes[0]] == [16, 4]
    assert [orjson.loads(m)["n"] for m in transport.messages] == list(range(20))


async def test_hub_counts_first_and_last_subscriber() -> None:
    node = make_node()
    a, _ = new_client(node)
    b, _ = new_client(node)
    hub = node.hub  # type: ignore[attr-defined]
    assert hub.add_sub("ch", a) is True
    assert hub.add_sub("ch", b) is False
    assert hub.num_subscribers("ch") == 2
    assert hub.remove_sub("ch", a) is False
    assert hub.remove_sub("ch", b) is True
    assert hub.num_channels() == 0


async def test_slow_consumer_is_disconnected_when_the_socket_does_not_drain() -> None:
    node = make_node(queue_max_size=1000)
    slow, st = new_client(node)
    fast, ft = new_client(node)
    node.hub.add_sub("ch", slow)  # type: ignore[attr-defined]
    node.hub.add_sub("ch", fast)  # type: ignore[attr-defined]
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
    assert transport.frames == [], "queued bytes of a slow client are dropped, not written"
