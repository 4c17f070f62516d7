"""Tags filters (``allow_tags_filter``, the protocol's ``tf``) with the real centrifuge-js SDK's
``tagsFilter`` option, on stream and map subscriptions, memory engine and Redis Cluster: each subscriber gets
only the publications whose tags match its filter, recovery and map state pages are filtered the same way,
skipped offsets do not break a positioned subscription, and filters where none is allowed, or malformed, get
107. Delta with a tags filter: the SDK refuses the pair, and a raw client gets what centrifuge sends it."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import pytest
from centrifuge.fossil import apply_delta
from harness import JsFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsCallError, JsClient

FILTERS: dict[str, Any] = {
    "channel": {"namespaces": [
        {"name": "ticks", "allow_subscribe_for_client": True, "allow_tags_filter": True,
         "history_size": 100, "history_ttl": "300s", "allow_recovery": True, "allow_positioning": True,
         "allowed_delta_types": ["fossil"]},
        {"name": "stocks", "subscription_type": "map", "allow_subscribe_for_client": True,
         "allow_tags_filter": True, "map": {"mode": "persistent", "min_page_size": 1}},
        {"name": "chat", "allow_subscribe_for_client": True},
    ]},
}
TECH = {"key": "sector", "cmp": "eq", "val": "tech"}
ENERGY_OR_DEAR = {"op": "or", "nodes": [{"key": "sector", "cmp": "eq", "val": "energy"},
                                        {"key": "price", "cmp": "gt", "val": "100"}]}
NOT_LISTED = {"op": "not", "nodes": [{"key": "sector", "cmp": "in", "vals": ["tech", "energy"]}]}
TICKS = [("tech", "50"), ("energy", "20"), ("food", "300"), ("tech", "150"), ("food", "1e1"), ("energy", "x")]


@pytest.fixture
async def server(engine_section: dict[str, Any], server_factory: ServerFactory) -> ServerProcess:
    return await server_factory({**FILTERS, **engine_section})


async def _client(server: ServerProcess, js_factory: JsFactory, protocol: str = "json") -> JsClient:
    js = await js_factory(server, {"protocol": protocol})
    await js.call("connect", token=server.token("trader"), wait=True)
    return js


def _value(data: Any) -> Any:
    return json.loads(base64.b64decode(data["__bytes__"])) if isinstance(data, dict) and "__bytes__" in data \
        else data


def _seen(js: JsClient, channel: str) -> list[int]:
    return [_value(e["data"])["i"] for e in js.events("publication") if e["channel"] == channel]


async def test_stream_subscribers_get_what_their_filter_matches(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("ticks:")
    tech = await _client(server, js_factory)
    energy_or_dear = await _client(server, js_factory, "protobuf")
    rest = await _client(server, js_factory)
    everything = await _client(server, js_factory)
    await tech.call("subscribe", channel=ch, tagsFilter=TECH, positioned=True, wait=True)
    await energy_or_dear.call("subscribe", channel=ch, tagsFilter=ENERGY_OR_DEAR, wait=True)
    await rest.call("subscribe", channel=ch, tagsFilter=NOT_LISTED, wait=True)
    await everything.call("subscribe", channel=ch, wait=True)
    for i, (sector, price) in enumerate(TICKS):
        await server.api_result("publish", {"channel": ch, "data": {"i": i},
                                            "tags": {"sector": sector, "price": price}})
    await wait_until(lambda: len(_seen(everything, ch)) == len(TICKS), what="every tick delivered")
    await wait_until(lambda: _seen(energy_or_dear, ch) == [1, 2, 3, 5], what="energy or price > 100")
    # Each client is its own connection: one that got every tick says nothing about when another's arrive.
    await wait_until(lambda: _seen(tech, ch) == [0, 3], what="tech ticks")
    await wait_until(lambda: _seen(rest, ch) == [2, 4], what="ticks of unlisted sectors")
    # The positioned subscriber skipped offsets it was not sent, and is still subscribed (no resubscribe).
    assert [e for e in tech.events("subscribing") if e["channel"] == ch][-1]["reason"] == "subscribe called"
    await server.api_result("publish", {"channel": ch, "data": {"i": 99}, "tags": {"sector": "tech"}})
    await wait_until(lambda: _seen(tech, ch) == [0, 3, 99], what="a later match")


async def test_recovered_publications_are_filtered(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("ticks:")
    js = await _client(server, js_factory)
    await js.call("subscribe", channel=ch, tagsFilter=TECH, recoverable=True, wait=True)
    await js.call("unsubscribe", channel=ch)
    for i, (sector, price) in enumerate(TICKS):
        await server.api_result("publish", {"channel": ch, "data": {"i": i},
                                            "tags": {"sector": sector, "price": price}})
    await js.call("subscribe", channel=ch, wait=True)
    subscribed = [e for e in js.events("subscribed") if e["channel"] == ch][-1]
    assert subscribed["recovered"] is True
    await wait_until(lambda: _seen(js, ch) == [0, 3], what="the recovered tech ticks")


async def test_map_state_and_updates_are_filtered(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("stocks:")
    for i, (sector, price) in enumerate(TICKS):
        await server.api_result("map_publish", {"channel": ch, "key": f"s{i}", "data": {"i": i},
                                                "tags": {"sector": sector, "price": price}})
    js = await _client(server, js_factory)
    await js.call("map_subscribe", channel=ch, tagsFilter=ENERGY_OR_DEAR, pageSize=2, wait=True)
    sync = await js.wait("map_sync", channel=ch)
    assert sorted(e["key"] for e in sync["entries"]) == ["s1", "s2", "s3", "s5"]
    await server.api_result("map_publish", {"channel": ch, "key": "s0", "data": {"i": 0},
                                            "tags": {"sector": "tech", "price": "10"}})
    await server.api_result("map_publish", {"channel": ch, "key": "s6", "data": {"i": 6},
                                            "tags": {"sector": "energy"}})
    assert (await js.wait("map_update", channel=ch, key="s6"))["data"] == {"i": 6}
    assert not [e for e in js.events("map_update") if e["key"] == "s0"]
    # A removal carries the entry's tags: the filter lets through the removal of a key it matches.
    await server.api_result("map_remove", {"channel": ch, "key": "s0"})
    await server.api_result("map_remove", {"channel": ch, "key": "s6"})
    assert (await js.wait("map_update", channel=ch, key="s6", removed=True))["removed"] is True
    assert not [e for e in js.events("map_update") if e["key"] == "s0"]


async def test_filters_where_not_allowed_or_malformed_get_107(server: ServerProcess, js_factory: JsFactory) -> None:
    js = await _client(server, js_factory)
    not_allowed = unique_channel("chat:")
    await js.call("subscribe", channel=not_allowed, tagsFilter=TECH)
    assert (await js.wait("unsubscribed", channel=not_allowed))["code"] == 107
    for bad in ({"key": "sector", "cmp": "bogus", "val": "x"}, {"key": "sector", "cmp": "in", "val": "x"},
                {"op": "not", "nodes": [TECH, TECH]}, {"op": "and"}):
        ch = unique_channel("ticks:")
        await js.call("subscribe", channel=ch, tagsFilter=bad)
        assert (await js.wait("unsubscribed", channel=ch))["code"] == 107, bad
    ch = unique_channel("stocks:")
    await js.call("map_subscribe", channel=ch, tagsFilter={"key": "", "cmp": "eq", "val": "x"})
    assert (await js.wait("map_unsubscribed", channel=ch))["code"] == 107
    # The connection stays usable.
    ok = unique_channel("ticks:")
    await js.call("subscribe", channel=ok, tagsFilter=TECH, wait=True)


# -- delta with a tags filter -------------------------------------------------------------------------------
# Centrifugo documents the two as mutually exclusive, and centrifuge-js refuses the pair when the subscription is
# made; centrifuge itself (client.go subscribe) takes it: a delta subscriber's live publications are not filtered
# (its patches chain through every value), the publications recovered on subscribe are.


async def test_the_sdk_refuses_delta_with_a_tags_filter(server: ServerProcess, js_factory: JsFactory) -> None:
    js = await _client(server, js_factory)
    ch = unique_channel("ticks:")
    with pytest.raises(JsCallError) as refused:
        await js.call("subscribe", channel=ch, tagsFilter=TECH, delta="fossil", recoverable=True)
    assert "cannot use delta and tagsFilter together" in refused.value.message
    assert not [e for e in js.events() if e.get("channel") == ch], "nothing was sent for that subscription"
    # Either one alone is fine on the same connection.
    await js.call("subscribe", channel=ch, tagsFilter=TECH, wait=True)
    other = unique_channel("ticks:")
    await js.call("subscribe", channel=other, delta="fossil", positioned=True, wait=True)


class _Raw:
    """A bare JSON protocol connection: what a client that does not use centrifuge-js may send."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: list[dict[str, Any]] = []
        self.next_id = 0

    async def recv(self) -> dict[str, Any]:
        while not self.pending:
            msg = await self.ws.receive(5)
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            self.pending.extend(json.loads(line) for line in msg.data.split("\n") if line)
        return self.pending.pop(0)

    async def command(self, **cmd: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, **cmd}))
        while (msg := await self.recv()).get("id") != self.next_id:
            self.pending.append(msg)  # a push that came first: keep it for pub()
        return msg

    async def pub(self) -> dict[str, Any]:
        while not (msg := await self.recv()).get("push", {}).get("pub"):
            pass
        return msg["push"]["pub"]


async def test_a_raw_delta_subscriber_gets_every_live_publication_and_filtered_recovery(
        server: ServerProcess) -> None:
    ch = unique_channel("ticks:")
    sub = {"channel": ch, "tf": TECH, "delta": "fossil", "recoverable": True}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            c = _Raw(ws)
            await c.command(connect={"token": server.token("raw")})
            result = (await c.command(subscribe=sub))["subscribe"]
            assert result["delta"] is True and result["recoverable"] is True
            value = b""
            docs = [{"i": i, "sector": s, "pad": "x" * 200} for i, s in enumerate(["tech", "energy", "tech"])]
            for doc in docs:
                await server.api_result("publish", {"channel": ch, "data": doc, "delta": True,
                                                    "tags": {"sector": doc["sector"]}})
            for doc in docs:  # the energy one too, and each patch applies to the value before it
                pub = await c.pub()
                data = pub["data"].encode()
                value = bytes(apply_delta(value, data)) if pub.get("delta") else data
                assert json.loads(value) == doc
            epoch = result["epoch"]
        for i, sector in [(3, "energy"), (4, "tech"), (5, "energy")]:
            await server.api_result("publish", {"channel": ch, "data": {"i": i}, "tags": {"sector": sector}})
        async with session.ws_connect(server.ws_url) as ws:
            c = _Raw(ws)
            await c.command(connect={"token": server.token("raw")})
            result = (await c.command(subscribe={**sub, "recover": True, "offset": 3, "epoch": epoch}))["subscribe"]
    assert result["recovered"] is True and result["delta"] is True
    # Recovered: only what the filter matches, each a full value (a JSON string, as for any delta subscriber).
    assert [(p["offset"], json.loads(p["data"])) for p in result["publications"]] == [(5, {"i": 4})]
