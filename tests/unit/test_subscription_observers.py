"""Observers of a channel (the admin UI's live tail) keep its engine subscription like subscribers do, get every
publication after the hub's fan-out, and are no connections."""

from __future__ import annotations

import asyncio
import dataclasses

from node.config import Config
from node.models import Publication, StreamPosition
from node.server import build_node
from node.subscriptions import Subscriptions


@dataclasses.dataclass
class Receiver:
    id: str
    unidirectional: bool = False
    framing: str = "ws-text"


class Engine:
    """Records the engine subscriptions ``Subscriptions`` asks for."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.unsubscribed = asyncio.Event()

    async def subscribe(self, channel: str) -> None:
        self.calls.append(f"+{channel}")

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append(f"-{channel}")
        self.unsubscribed.set()


async def test_observer_keeps_the_channel_engaged_until_it_leaves() -> None:
    engine = Engine()
    subs = Subscriptions(engine.subscribe, engine.unsubscribe)
    seen: list[int] = []

    def observer(channel: str, pub: Publication, sp: StreamPosition) -> None:
        seen.append(pub.offset)

    await subs.observe("ch", observer)
    assert engine.calls == ["+ch"] and subs.observers == {"ch": [observer]}
    await subs.engage("ch")
    subs.add("ch", Receiver("c1"))
    assert engine.calls == ["+ch"]  # one engine subscription for both
    subs.remove("ch", Receiver("c1"))
    # The last subscriber left, but the observer still needs the channel: no unsubscribe is even scheduled.
    assert subs._handles == {}
    subs.unobserve("ch", observer)
    await asyncio.wait_for(engine.unsubscribed.wait(), 5)
    assert engine.calls == ["+ch", "-ch"] and subs.observers == {}
    subs.unobserve("ch", observer)  # twice is harmless
    await subs.close()


async def test_node_calls_observers_after_the_fan_out_and_counts_no_client() -> None:
    node = build_node(Config())
    await node.start()
    try:
        got: list[tuple[str, bytes, int]] = []
        await node.observe("ch", lambda ch, pub, sp: got.append((ch, pub.data, pub.offset)))
        node.handle_publication("ch", Publication(data=b'{"a":1}', offset=7), StreamPosition(7, "e"))
        node.handle_publication("other", Publication(data=b"{}", offset=1), StreamPosition(1, "e"))
        assert got == [("ch", b'{"a":1}', 7)]
        info = node.node_info()
        assert (info.num_clients, info.num_subs, info.num_channels) == (0, 0, 0)
    finally:
        await node.shutdown(1)
