"""Fossil delta on shared poll subscriptions, negotiated and sent as centrifuge does (client_shared_poll.go: the
subscribe's ``delta`` against the namespace's ``allowed_delta_types``; client_keyed.go keyedWritePublication:
per key, the first data in full, then patches against the data the connection holds, when the backend's
refresh answer carries ``prev_data``; after a removal or a new epoch in full again).

Through the real centrifuge-js SDK (the application gets full values; the SDK's deltaStats count the patches)
and over a bare WebSocket (the frames carry ``"delta":true`` patches that centrifuge-python's fossil decoder
turns into the backend's data, one frame shared by the connections that hold the base); ``prev_data`` from an
HTTP and a GRPC refresh proxy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from centrifuge.fossil import apply_delta
from harness import JsFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsClient
from proxy_backends import HttpBackend
from test_shared_poll import (
    HMAC_KEY,
    HOOK,
    Store,
    _RawPush,
    config,
    grpc_refresh,
    make_signature,
    subscriber,
    updates,
    wire,
)

# A value much larger than what changes in it, so a patch is worth sending.
TEXT = "a long post body that does not change between polls; " * 6


@pytest.fixture
async def backend() -> AsyncIterator[HttpBackend]:
    async with HttpBackend() as b:
        yield b


def post(key: str, votes: int) -> dict[str, Any]:
    return {"post": key, "text": TEXT, "votes": votes}


def delta_config(endpoint: str, grpc: bool = False) -> dict[str, Any]:
    """Versioned mode (prev_data is read there, as centrifuge does); ``votes`` allows fossil, ``plain`` not."""
    cfg = config(endpoint, mode="versioned", grpc=grpc)
    votes = cfg["channel"]["namespaces"][0]
    votes["allowed_delta_types"] = ["fossil"]
    cfg["channel"]["namespaces"].append({**votes, "name": "plain", "allowed_delta_types": []})
    return cfg


async def stats(js: JsClient, channel: str) -> tuple[int, int]:
    got = await js.call("sp_delta_stats", channel=channel)
    return got["numFullPayloads"], got["numDeltaPayloads"]


@pytest.mark.parametrize("protocol", ["json", "protobuf"])
async def test_the_sdk_gets_full_values_from_per_key_patches_full_again_after_removal_and_new_epoch(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend, protocol: str) -> None:
    store = Store(versioned=True, prev_data=True)
    store.epoch = "e1"  # the SDK starts over (versions from 0) when a known epoch changes, as with Centrifugo
    wire(backend, store)
    for key in ("x", "y"):
        store.set(key, post(key, 0))
    srv = await server_factory(delta_config(backend.endpoint(HOOK)))
    ch = unique_channel("votes:")
    js = await subscriber(srv, js_factory, backend, ch, protocol=protocol, delta="fossil")
    plain = await subscriber(srv, js_factory, backend, ch, user="bob")  # no delta asked: full values on the wire
    for c in (js, plain):
        await c.call("sp_track", channel=ch, keys=["x", "y"])
    await wait_until(lambda: all(updates(c, k) == [post(k, 0)] for c in (js, plain) for k in ("x", "y")),
                     what="first data")
    for votes in (1, 2):
        store.set("x", post("x", votes))
        await wait_until(lambda v=votes: updates(js, "x")[-1:] == updates(plain, "x")[-1:] == [post("x", v)],
                         what=f"x at {votes} votes")
    assert updates(js, "x") == updates(plain, "x") == [post("x", v) for v in range(3)]
    assert await stats(js, ch) == (2, 2)  # x and y in full first, then x's two changes as patches
    got = await js.call("sp_delta_stats", channel=ch)
    # Four values of about the same size, two of them sent as small patches: about half the bytes.
    assert got["bytesReceived"] < got["bytesDecoded"] * 0.6

    # A removal ends the key's chain: tracked again, its first data comes in full, then patches again.
    store.removed.add("x")
    await js.wait("sp_update", key="x", removed=True)
    store.removed.discard("x")
    store.set("x", post("x", 3))
    await js.call("sp_track", channel=ch, keys=["x"])
    await wait_until(lambda: updates(js, "x")[-1:] == [post("x", 3)], what="x tracked again")
    store.set("x", post("x", 4))
    await wait_until(lambda: updates(js, "x")[-1:] == [post("x", 4)], what="x at 4 votes")
    assert await stats(js, ch) == (3, 3)

    # A new backend epoch: unsubscribed with 2500, subscribed and tracked again, data in full first.
    store.epoch = "e2"
    for key in ("x", "y"):
        store.set(key, post(key, 5), version=1)
    await wait_until(lambda: updates(js, "x")[-1:] == [post("x", 5)] and updates(js, "y")[-1:] == [post("y", 5)],
                     what="data under the new epoch")
    # Twice: the channel's first epoch ("" until the backend named e1) and then e2.
    assert [e.get("code") for e in js.events("subscribing")].count(2500) == 2
    store.set("y", post("y", 6))
    await wait_until(lambda: updates(js, "y")[-1:] == [post("y", 6)] == updates(plain, "y")[-1:], what="y at 6")
    full, patches = await stats(js, ch)
    assert (full, patches) == (5, 4), (full, patches)


async def raw_tracker(http: aiohttp.ClientSession, srv: ServerProcess, user: str, channel: str,
                      version: int = 0) -> tuple[aiohttp.ClientWebSocketResponse, _RawPush, dict[str, Any]]:
    """A bare JSON WebSocket connection subscribed to ``channel`` asking for fossil delta and tracking key ``y``
    (saying it holds ``version``): the connection and the subscribe reply."""
    ws = await http.ws_connect(srv.ws_url)
    c = _RawPush(ws, "json")
    await c.send({"id": 1, "connect": {"token": srv.token(user)}})
    await c.send({"id": 2, "subscribe": {"channel": channel, "type": 4, "delta": "fossil"}})
    signature = make_signature(HMAC_KEY, user, channel, ["y"], 60)
    await c.send({"id": 3, "sub_refresh": {"channel": channel, "type": 1, "track": [
        {"signature": signature, "items": [{"key": "y", "version": version}]}]}})
    replies: dict[int, Any] = {}
    while len(replies) < 3:
        msg = json.loads(await c.message())
        assert "push" not in msg, msg
        replies[msg["id"]] = msg
    return ws, c, replies[2]["subscribe"]


async def test_the_wire_carries_one_fossil_patch_per_update_to_connections_that_hold_its_base(
        server_factory: ServerFactory, backend: HttpBackend) -> None:
    store = Store(versioned=True, prev_data=True)
    wire(backend, store)
    store.set("y", post("y", 0))
    srv = await server_factory(delta_config(backend.endpoint(HOOK)))
    ch, other = unique_channel("votes:"), unique_channel("plain:")
    async with aiohttp.ClientSession() as http:
        erin_ws, erin, sub = await raw_tracker(http, srv, "erin", ch)
        assert sub.get("delta") is True
        plain_ws, plain, sub = await raw_tracker(http, srv, "erin", other)
        assert "delta" not in sub  # asked for, but the namespace allows no delta type: not negotiated
        # A delta subscription's data is a JSON string (the SDK keeps its bytes as the key's base).
        first = await erin.push()
        base = json.loads(first)["push"]["pub"]["data"]
        assert isinstance(base, str) and json.loads(base) == post("y", 0)
        assert b'"delta"' not in first
        assert json.loads(await plain.push())["push"]["pub"]["data"] == post("y", 0)
        fred_ws, fred, _ = await raw_tracker(http, srv, "fred", ch)  # a late tracker gets version 1 in full
        assert await fred.push() == first
        # gus says it holds version 1 (a reconnect) but was sent nothing on this connection: its next data
        # comes in full, as centrifuge's per-key deltaReady has it.
        gus_ws, gus, _ = await raw_tracker(http, srv, "gus", ch, version=1)

        store.set("y", post("y", 1))
        patched = [await erin.push(), await fred.push()]
        full_again, plain_frame = await gus.push(), await plain.push()
        for ws in (erin_ws, plain_ws, fred_ws, gus_ws):
            await ws.close()
    assert patched[0] == patched[1]  # the same bytes, encoded once
    head = b'{"push":{"channel":%s,"pub":{"data":"' % json.dumps(ch).encode()
    assert patched[0].startswith(head) and patched[0].endswith(b'","delta":true,"key":"y","version":2}}}'), patched
    patch = json.loads(patched[0])["push"]["pub"]["data"]
    full = bytes(apply_delta(base.encode(), patch.encode()))
    assert json.loads(full) == post("y", 1)
    assert len(patch) < len(full) / 2
    assert json.loads(full_again)["push"]["pub"] == {"data": full.decode(), "key": "y", "version": 2}
    assert json.loads(plain_frame)["push"]["pub"] == {"data": post("y", 1), "key": "y", "version": 2}


async def test_prev_data_from_a_grpc_refresh_proxy(server_factory: ServerFactory, js_factory: JsFactory,
                                                   backend: HttpBackend) -> None:
    store = Store(versioned=True, prev_data=True, grpc=True)
    store.set("g", post("g", 0))
    async with grpc_refresh(backend, store) as grpc_backend:
        srv = await server_factory(delta_config(grpc_backend.endpoint, grpc=True))
        ch = unique_channel("votes:")
        js = await subscriber(srv, js_factory, backend, ch, delta="fossil")
        await js.call("sp_track", channel=ch, keys=["g"])
        await wait_until(lambda: updates(js, "g") == [post("g", 0)], what="data over GRPC")
        store.set("g", post("g", 1))
        await wait_until(lambda: updates(js, "g")[-1:] == [post("g", 1)], what="change over GRPC")
        assert await stats(js, ch) == (1, 1)
