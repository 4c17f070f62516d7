"""Inputs Centrifugo refuses and how: id-less connect, negative offsets, out-of-range limits (3501 each, as
centrifuge's decoder fails on them), and the subscribe flag that turns a failed recovery into error 112."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from harness import JsFactory, ServerFactory, ServerProcess, unique_channel
from test_protocol_raw import raw


@pytest.fixture(scope="module")
def srv(module_server: ServerProcess) -> ServerProcess:
    return module_server


@pytest.mark.parametrize("command", [
    {"connect": {}},  # a connect without id
    {"id": 0, "connect": {}},
])
async def test_connect_without_id_is_3501(srv: ServerProcess, command: dict[str, Any]) -> None:
    async with raw(srv) as c:
        command["connect"]["token"] = srv.token("alice")
        await c.send(command)
        assert await c.closed() == (3501, "bad request")


@pytest.mark.parametrize("command", [
    {"subscribe": {"channel": "chat:CH", "offset": -1}},
    {"subscribe": {"channel": "chat:CH", "recover": True, "offset": -3, "epoch": "x"}},
    {"history": {"channel": "chat:CH", "since": {"offset": -1, "epoch": ""}, "limit": 10}},
    {"history": {"channel": "chat:CH", "limit": 2**31}},
    {"history": {"channel": "chat:CH", "limit": -2**31 - 1}},
])
async def test_negative_offsets_and_out_of_range_limits_are_3501(srv: ServerProcess,
                                                                 command: dict[str, Any]) -> None:
    ch = unique_channel("chat:")
    method = next(iter(command))
    command[method]["channel"] = ch
    async with raw(srv) as bad, raw(srv) as good:
        await good.connect(srv.token("good"))
        await good.send({"id": 2, "subscribe": {"channel": ch}})
        await good.reply(2)
        await bad.connect(srv.token("bad"))
        await bad.send({"id": 2, **command})
        assert await bad.closed() == (3501, "bad request")
        # Nothing else is affected: the other connection still gets publications and answers commands.
        await srv.api_result("publish", {"channel": ch, "data": {"n": 1}})
        assert (await good.recv())["push"]["pub"]["data"] == {"n": 1}
        await good.send({"id": 3, "history": {"channel": ch, "limit": -1}})  # -1: clamped to the maximum
        assert [p["data"] for p in (await good.reply(3))["history"]["publications"]] == [{"n": 1}]


async def test_reject_unrecovered_flag_is_error_112(srv: ServerProcess) -> None:
    ch = unique_channel("chat:")
    top = await srv.api_result("publish", {"channel": ch, "data": {"n": 1}})
    async with raw(srv) as c:
        await c.connect(srv.token("alice"))
        # A stale epoch with the flag (bit 2): refused with 112, and the channel is not subscribed.
        await c.send({"id": 2, "subscribe": {"channel": ch, "recover": True, "offset": 1, "epoch": "stale",
                                             "recoverable": True, "flag": 3}})
        assert (await c.reply(2))["error"] == {"code": 112, "message": "unrecoverable position"}
        # Without the flag the same request subscribes with recovered: false.
        await c.send({"id": 3, "subscribe": {"channel": ch, "recover": True, "offset": 1, "epoch": "stale",
                                             "recoverable": True, "flag": 1}})
        result = (await c.reply(3))["subscribe"]
        assert result["recoverable"] is True and result.get("recovered", False) is False
        # With the flag, a position that can be recovered subscribes as usual.
        await c.send({"id": 4, "unsubscribe": {"channel": ch}})
        await c.reply(4)
        await c.send({"id": 5, "subscribe": {"channel": ch, "recover": True, "offset": 0, "epoch": top["epoch"],
                                             "recoverable": True, "flag": 2}})
        result = (await c.reply(5))["subscribe"]
        assert result["recovered"] is True and [p["data"] for p in result["publications"]] == [{"n": 1}]


async def test_js_get_state_flow_recovers_after_112(srv: ServerProcess, js_factory: JsFactory) -> None:
    """centrifuge-js's getState flow: it subscribes from the app's position with the reject flag; a 112 makes it
    ask the app again, and the second position is recovered from."""
    ch = unique_channel("chat:")
    first = await srv.api_result("publish", {"channel": ch, "data": {"n": 1}})
    await srv.api_result("publish", {"channel": ch, "data": {"n": 2}})
    js = await js_factory(srv)
    await js.call("connect", token=srv.token("alice"), wait=True)
    await js.call("subscribe", channel=ch, recoverable=True, getState=[
        {"offset": 1, "epoch": "stale-epoch"},
        {"offset": first["offset"], "epoch": first["epoch"]},
    ])
    subscribed = await js.wait("subscribed", channel=ch)
    assert subscribed["recovered"] is True
    assert [e["n"] for e in js.events("get_state")] == [0, 1]
    assert (await js.wait("publication", channel=ch))["data"] == {"n": 2}


async def test_publication_data_format(server_factory: ServerFactory) -> None:
    """``publication_data_format`` as Centrifugo checks it, for the API and client publishes: "json" and
    "json_object" want valid JSON (an object), "binary" takes any bytes."""
    common = {"allow_subscribe_for_client": True, "allow_publish_for_client": True}
    srv = await server_factory({"channel": {"namespaces": [
        {"name": "js", "publication_data_format": "json", **common},
        {"name": "ob", "publication_data_format": "json_object", **common},
        {"name": "bi", "publication_data_format": "binary", **common},
    ]}})
    binary = base64.b64encode(b"\x00\xff").decode()
    cases = [("js:x", {"b64data": binary}, 107), ("js:x", {"data": [1]}, 0), ("ob:x", {"data": [1]}, 107),
             ("ob:x", {"data": {"k": 1}}, 0), ("bi:x", {"b64data": binary}, 0)]
    for channel, payload, code in cases:
        reply = await srv.api("publish", {"channel": channel, **payload})
        assert reply.get("error", {}).get("code", 0) == code, (channel, payload, reply)
    broadcast = await srv.api_result("broadcast", {"channels": ["ob:y", "js:y"], "data": [2]})
    assert [r.get("error", {}).get("code", 0) for r in broadcast["responses"]] == [107, 0]
    async with raw(srv) as c:
        await c.connect(srv.token("alice"))
        await c.send({"id": 2, "publish": {"channel": "ob:z", "data": "not an object"}})
        assert (await c.reply(2))["error"]["code"] == 107
