"""Payloads are opaque bytes end to end, on the memory engine and on Redis Cluster: what a client or the API
published is what subscribers, history and recovery give back, byte for byte, through the real SDKs
(centrifuge-js JSON and protobuf, centrifuge-python JSON and protobuf) and ``cent``.

JSON clients get JSON payloads exactly as sent (whitespace and key order kept; raw newlines, which can only be
whitespace, dropped as centrifuge does); binary payloads reach protobuf clients as they are and close a JSON
subscriber with 3506, as in centrifuge.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import cent
import pytest
from harness import JsFactory, PyFactory, ServerFactory, ServerProcess, unique_channel
from jsclient import JsClient
from redis_servers import RedisCluster
from test_protocol_raw import raw

from node.protocol import client_pb2 as pb
from node.protocol.proto import split_delimited

# Odd whitespace and key order (an escaped newline inside a string is part of the value).
ODD_JSON = b'{ "z" : 1,\t"a":[ 1 , 2 ],  "m":{"y":null ,"b":"x\\ny"} }'
# Pretty-printed by an API caller: raw newlines between tokens.
PRETTY_JSON = b'{\n  "b": [1,\n   2],\n  "a" :  "v"\n}'
ALL_BYTES = bytes(range(256))


@pytest.fixture(params=["memory", "redis_cluster"])
async def srv(request: pytest.FixtureRequest, server_factory: ServerFactory, redis_prefix: str) -> ServerProcess:
    if request.param == "memory":
        return await server_factory()
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return await server_factory({"engine": {"type": "redis", "redis": {"address": [cluster.url],
                                                                        "prefix": redis_prefix}}})


def js_payload(value: Any) -> bytes:
    """The driver reports a protobuf client's Uint8Array payloads as {"__bytes__": base64}."""
    assert isinstance(value, dict) and "__bytes__" in value, value
    return base64.b64decode(value["__bytes__"])


def pb_pushes(js: JsClient) -> list[pb.Push]:
    """Every push a protobuf JS client received (from its traced binary frames)."""
    out = []
    for frame in js.events("frame_in"):
        for chunk in split_delimited(js_payload(frame["data"])):
            reply = pb.Reply()
            reply.ParseFromString(chunk)
            if reply.HasField("push"):
                out.append(reply.push)
    return out


async def js_subscriber(js_factory: JsFactory, srv: ServerProcess, ch: str, protocol: str, **sub: Any) -> JsClient:
    js = await js_factory(srv, {"protocol": protocol, "trace": True})
    await js.call("connect", token=srv.token(f"js-{protocol}"), wait=True)
    await js.call("subscribe", channel=ch, wait=True, **sub)
    return js


async def api_publish_body(srv: ServerProcess, body: bytes) -> dict[str, Any]:
    status, data = await srv.api_raw("publish", body=body)
    assert status == 200, data
    reply = json.loads(data)
    assert "result" in reply, reply
    result: dict[str, Any] = reply["result"]
    return result


async def test_json_payloads_arrive_byte_for_byte(srv: ServerProcess, js_factory: JsFactory,
                                                  py_factory: PyFactory) -> None:
    ch = unique_channel("chat:")
    js_json = await js_subscriber(js_factory, srv, ch, "json")
    js_pb = await js_subscriber(js_factory, srv, ch, "protobuf")
    py_pb = await py_factory(srv, "py-pb", use_protobuf=True)
    await py_pb.subscribe(ch)
    py_json = await py_factory(srv, "py-json")
    await py_json.subscribe(ch)
    async with raw(srv) as client:
        await client.connect(srv.token("raw"))
        await client.send({"id": 2, "subscribe": {"channel": ch}})
        await client.reply(2)
        # A JSON client publishes the odd payload; then an API caller a pretty-printed one.
        await client.ws.send_str('{"id":3,"publish":{"channel":"' + ch + '","data":' + ODD_JSON.decode() + "}}")
        frames = []  # the raw text of the publication pushes
        while not frames:
            msg = await client.ws.receive(5)
            assert msg.type is aiohttp.WSMsgType.TEXT, (msg, srv.log_report(30))
            frames += [line for line in msg.data.split("\n") if '"pub"' in line]
        await api_publish_body(srv, b'{"channel": "%s",\n "data": %s}' % (ch.encode(), PRETTY_JSON))
        while len(frames) < 2:
            msg = await client.ws.receive(5)
            frames += [line for line in msg.data.split("\n") if '"pub"' in line]
    flat = PRETTY_JSON.replace(b"\n", b"")  # JSON clients: raw newlines dropped, nothing else touched
    assert ODD_JSON.decode() in frames[0] and flat.decode() in frames[1]

    # Protobuf subscribers get the exact bytes, newlines included.
    got = [js_payload((await js_pb.wait("publication", channel=ch))["data"]) for _ in range(2)]
    assert got == [ODD_JSON, PRETTY_JSON]
    assert [(await py_pb.wait("publication", ch)).ctx.pub.data for _ in range(2)] == [ODD_JSON, PRETTY_JSON]
    # JSON SDKs decode the same values; the JS client's raw frames carry the bytes as sent.
    for expected in (ODD_JSON, PRETTY_JSON):
        assert (await js_json.wait("publication", channel=ch))["data"] == json.loads(expected)
        assert (await py_json.wait("publication", ch)).ctx.pub.data == json.loads(expected)
    assert any(ODD_JSON.decode() in str(f["data"]) for f in js_json.events("frame_in"))

    # History: over the HTTP API as written, through cent, through a protobuf client.
    status, body = await srv.api_raw("history", {"channel": ch, "limit": -1})
    assert status == 200 and ODD_JSON in body and flat in body
    async with srv.cent() as api:
        history = await api.history(cent.HistoryRequest(channel=ch, limit=-1))
    assert [p.data for p in history.publications] == [json.loads(ODD_JSON), json.loads(PRETTY_JSON)]
    sub = py_pb.client.get_subscription(ch)
    assert sub is not None
    result = await sub.history(limit=-1)
    assert [p.data for p in result.publications] == [ODD_JSON, PRETTY_JSON]

    # Recovery: a protobuf JS client resubscribing from offset 0 gets both back as sent.
    recovering = await js_subscriber(js_factory, srv, ch, "protobuf", recoverable=True,
                                     since={"offset": 0, "epoch": result.epoch})
    assert (await recovering.wait("subscribed", channel=ch))["recovered"] is True
    got = [js_payload((await recovering.wait("publication", channel=ch))["data"]) for _ in range(2)]
    assert got == [ODD_JSON, PRETTY_JSON]


async def test_binary_payloads_reach_protobuf_clients_and_close_json_ones(
        srv: ServerProcess, js_factory: JsFactory, py_factory: PyFactory) -> None:
    ch = unique_channel("chat:")
    js_pb = await js_subscriber(js_factory, srv, ch, "protobuf")
    py_pb = await py_factory(srv, "py-pb", use_protobuf=True)
    sub = await py_pb.subscribe(ch)
    js_json = await js_subscriber(js_factory, srv, ch, "json")

    await sub.publish(ALL_BYTES)  # a protobuf client publishes all 256 byte values
    async with srv.cent() as api:  # and an API caller, as b64data
        await api.publish(cent.PublishRequest(channel=ch, data=None,
                                              b64data=base64.b64encode(ALL_BYTES[::-1]).decode()))
    expected = [ALL_BYTES, ALL_BYTES[::-1]]
    assert [js_payload((await js_pb.wait("publication", channel=ch))["data"]) for _ in range(2)] == expected
    assert [(await py_pb.wait("publication", ch)).ctx.pub.data for _ in range(2)] == expected
    # centrifuge closes a JSON client that would be sent a payload JSON cannot carry: 3506, not reconnecting.
    assert (await js_json.wait("disconnected"))["code"] == 3506

    result = await sub.history(limit=-1)
    assert [p.data for p in result.publications] == expected
    recovering = await js_subscriber(js_factory, srv, ch, "protobuf", recoverable=True,
                                     since={"offset": 0, "epoch": result.epoch})
    assert (await recovering.wait("subscribed", channel=ch))["recovered"] is True
    assert [js_payload((await recovering.wait("publication", channel=ch))["data"]) for _ in range(2)] == expected
    # The HTTP API cannot write a binary payload into a JSON response: error 100, as documented.
    assert (await srv.api("history", {"channel": ch, "limit": -1}))["error"]["code"] == 100


async def test_fossil_delta_for_protobuf_subscribers(srv: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("chat:")
    js = await js_subscriber(js_factory, srv, ch, "protobuf", delta="fossil", positioned=True)
    base = bytes(range(256)) * 8
    payloads = [base, base[:1000] + b"changed" + base[1007:], base[:10] + b"\x00\xff" + base[12:]]
    async with aiohttp.ClientSession():
        for payload in payloads:
            await srv.api_result("publish", {"channel": ch, "b64data": base64.b64encode(payload).decode(),
                                             "delta": True})
    # The SDK applies the patches: it ends up with every payload exactly.
    assert [js_payload((await js.wait("publication", channel=ch))["data"]) for _ in payloads] == payloads
    pubs = [p.pub for p in pb_pushes(js) if p.HasField("pub")]
    assert [p.delta for p in pubs] == [False, True, True], "the first in full, then fossil patches over bytes"
    assert all(len(p.data) < 100 for p in pubs[1:])
