"""What a map subscriber gets on the wire, read with a raw JSON client where the SDK would hide it: a removal
carries its key and ``removed`` and no ``data`` field (centrifuge's encoder omits empty bytes), as does a
presence map entry; a fossil delta subscriber's removal has the empty JSON string as its data, as
centrifuge's JSON-escaped full value of nothing. A fossil delta subscriber with a tags filter (the SDK refuses
the pair; a raw client may ask) gets the changes its filter drops too, as centrifuge sends them: each patch
builds on the key's previous value."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import ServerFactory, ServerProcess, unique_channel, wait_until
from test_protocol_raw import Raw, raw

TYPE_MAP, TYPE_MAP_CLIENTS = 1, 2
PHASE_STREAM, PHASE_STATE = 1, 2

CONFIG: dict[str, Any] = {
    "channel": {
        "namespaces": [
            {"name": "board", "subscription_type": "map", "allow_subscribe_for_client": True,
             "allowed_delta_types": ["fossil"], "map": {"mode": "persistent"}},
            {"name": "tagged", "subscription_type": "map", "allow_subscribe_for_client": True,
             "allow_tags_filter": True, "allowed_delta_types": ["fossil"], "map": {"mode": "persistent"}},
            {"name": "chat", "allow_subscribe_for_client": True, "map_clients_presence_channel_prefix": "clients:"},
            {"name": "clients", "subscription_type": "map_clients", "allow_subscribe_for_client": True,
             "map": {"mode": "recoverable", "key_ttl": "60s"}},
        ],
    },
}


@pytest.fixture
async def server(engine_section: dict[str, Any], server_factory: ServerFactory) -> ServerProcess:
    return await server_factory({**CONFIG, **engine_section})


async def _map_subscribe(c: Raw, channel: str, kind: int, **extra: Any) -> list[dict[str, Any]]:
    """The state phase (one page here), then the stream phase that goes live; the state's entries."""
    await c.send({"id": 2, "subscribe": {"channel": channel, "type": kind, "phase": PHASE_STATE, **extra}})
    state = (await c.reply(2))["subscribe"]
    assert not state.get("cursor"), state
    await c.send({"id": 3, "subscribe": {"channel": channel, "type": kind, "phase": PHASE_STREAM,
                                         "epoch": state["epoch"], "offset": state.get("offset", 0), **extra}})
    live = await c.reply(3)
    assert "subscribe" in live, live
    return list(state.get("state", []))


async def _next_pub(c: Raw, channel: str) -> dict[str, Any]:
    while True:
        msg = await c.recv()
        push = msg.get("push", {})
        if push.get("channel") == channel and "pub" in push:
            return dict(push["pub"])


@pytest.mark.parametrize("delta", [False, True])
async def test_a_removal_carries_no_data(server: ServerProcess, delta: bool) -> None:
    ch = unique_channel("board:")
    await server.api_result("map_publish", {"channel": ch, "key": "a", "data": {"v": 1}})
    async with raw(server) as c:
        assert "connect" in await c.connect(server.token("alice"))
        entries = await _map_subscribe(c, ch, TYPE_MAP, **({"delta": "fossil"} if delta else {}))
        assert [e["key"] for e in entries] == ["a"]
        await server.api_result("map_remove", {"channel": ch, "key": "a"})
        pub = await _next_pub(c, ch)
        assert pub["key"] == "a" and pub["removed"] is True
        if delta:
            assert pub["data"] == "" and "delta" not in pub  # centrifuge's JSON-escaped empty value
        else:
            assert "data" not in pub
        # The removal is in the stream too: a later subscriber's stream page has it without data.
        await server.api_result("map_publish", {"channel": ch, "key": "b", "data": {"v": 2}})
        assert (await _next_pub(c, ch))["key"] == "b"
    read = await server.api_result("map_read_stream", {"channel": ch, "limit": 10})
    removal = next(e for e in read["entries"] if e.get("removed"))
    assert removal["key"] == "a" and "data" not in removal


async def test_a_presence_map_entry_carries_no_data(server: ServerProcess) -> None:
    ch = unique_channel("chat:")
    async with raw(server) as member, raw(server) as watcher:
        member_id = (await member.connect(server.token("bob")))["connect"]["client"]
        await member.send({"id": 2, "subscribe": {"channel": ch}})
        assert "subscribe" in await member.reply(2)
        await watcher.connect(server.token("carol"))

        async def listed() -> bool:  # the entry is written just after the subscribe reply
            state = await server.api_result("map_read_state", {"channel": f"clients:{ch}"})
            return bool(state.get("entries"))

        await wait_until(listed, what="the member in the clients map")
        entries = await _map_subscribe(watcher, f"clients:{ch}", TYPE_MAP_CLIENTS)
        assert [e["key"] for e in entries] == [member_id]
        assert "data" not in entries[0] and entries[0]["info"]["user"] == "bob"
        await member.send({"id": 3, "unsubscribe": {"channel": ch}})
        pub = await _next_pub(watcher, f"clients:{ch}")
        assert pub == {**pub, "key": member_id, "removed": True} and "data" not in pub


async def test_a_delta_subscriber_gets_what_its_tags_filter_drops(server: ServerProcess) -> None:
    ch = unique_channel("tagged:")
    async with raw(server) as c:
        await c.connect(server.token("alice"))
        await _map_subscribe(c, ch, TYPE_MAP, delta="fossil", tf={"key": "team", "cmp": "eq", "val": "eng"})
        pubs = []
        for n, team in ((1, "eng"), (2, "ops"), (3, "eng")):
            await server.api_result("map_publish", {"channel": ch, "key": "k", "data": {"n": n, "pad": "p" * 300},
                                                    "tags": {"team": team}, "delta": True})
            pubs.append(await _next_pub(c, ch))
        assert [(p["key"], p["tags"]["team"], p["offset"] - pubs[0]["offset"]) for p in pubs] == [
            ("k", "eng", 0), ("k", "ops", 1), ("k", "eng", 2)]
        # The first value in full (a JSON string), then patches against the one before, the dropped one too.
        assert "delta" not in pubs[0] and json.loads(pubs[0]["data"])["n"] == 1
        assert pubs[1]["delta"] is True and pubs[2]["delta"] is True
