"""The protobuf client protocol over WebSocket, with the real SDKs (centrifuge-js's protobuf build through the
node driver, centrifuge-python with ``use_protobuf``) and a raw client for the edge cases.

Payloads travel as bytes in protobuf; Fugato stores them as JSON, so JSON and protobuf subscribers of one
channel see the same publication.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import aiohttp
import pytest
from harness import JsFactory, PyFactory, ServerProcess, unique_channel

from node.protocol import client_pb2 as pb
from node.protocol.proto import split_delimited, varint

RECONNECT = {"code": 4000, "reason": "reconnect"}
JS_PROTOBUF = {"protocol": "protobuf", "minReconnectDelay": 1500, "maxReconnectDelay": 2500}


@pytest.fixture
async def server(module_server: ServerProcess) -> ServerProcess:
    return module_server


def js_bytes(value: Any) -> Any:
    """The driver reports Uint8Array payloads as {"__bytes__": base64}: decode them as the JSON they hold."""
    assert isinstance(value, dict) and "__bytes__" in value, value
    return json.loads(base64.b64decode(value["__bytes__"]))


async def publish_many(server: ServerProcess, channel: str, numbers: range) -> list[dict[str, Any]]:
    return [await server.api_result("publish", {"channel": channel, "data": {"n": i}}) for i in numbers]


async def test_js_protobuf_client_receives_publishes_and_reads_history(
    server: ServerProcess, js_factory: JsFactory, py_factory: PyFactory
) -> None:
    ch = unique_channel("chat:")
    js = await js_factory(server, {"protocol": "protobuf", "trace": True})
    await js.call("connect", token=server.token("pb-js"), wait=True)
    await js.call("subscribe", channel=ch, wait=True)
    frames = js.events("frame_in")
    assert frames and all(isinstance(f["data"], dict) for f in frames), "protobuf replies come in binary frames"

    json_client = await py_factory(server, "json-peer")  # a JSON client on the same channel
    await json_client.subscribe(ch)

    await server.api_result("publish", {"channel": ch, "data": {"text": "from api"}})
    pub = await js.wait("publication", channel=ch)
    assert js_bytes(pub["data"]) == {"text": "from api"}
    assert pub["offset"] == 1

    await js.call("publish", channel=ch, data='{"text":"from js"}')
    mine = await js.wait("publication", channel=ch)
    assert js_bytes(mine["data"]) == {"text": "from js"}
    assert mine["info"]["user"] == "pb-js"
    peer_pubs = [(await json_client.wait("publication", ch)).ctx.pub.data for _ in range(2)]
    assert peer_pubs == [{"text": "from api"}, {"text": "from js"}]

    history = await js.call("history", channel=ch, limit=-1)
    assert [(p["offset"], js_bytes(p["data"])) for p in history["publications"]] == [
        (1, {"text": "from api"}), (2, {"text": "from js"})]
    assert history["offset"] == 2 and history["epoch"]

    stats = await js.call("presence_stats", channel=ch)
    assert (stats["numClients"], stats["numUsers"]) == (2, 2)
    presence = await js.call("presence", channel=ch)
    assert sorted(info["user"] for info in presence["clients"].values()) == ["json-peer", "pb-js"]


async def test_js_protobuf_client_recovers_after_reconnect(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("feed:")
    user = f"pb-rec-{uuid.uuid4().hex[:8]}"
    js = await js_factory(server, JS_PROTOBUF)
    await js.call("connect", token=server.token(user), wait=True)
    await js.call("subscribe", channel=ch, wait=True)
    first = await js.wait("subscribed", channel=ch)
    assert (first["recoverable"], first["positioned"], first["wasRecovering"]) == (True, True, False)
    await publish_many(server, ch, range(1, 2))
    assert (await js.wait("publication", channel=ch))["offset"] == 1

    await server.api_result("disconnect", {"user": user, "disconnect": RECONNECT})
    await js.wait_event(lambda e: e.get("event") == "connecting" and e["code"] == 4000)
    await publish_many(server, ch, range(2, 5))

    resubscribed = await js.wait("subscribed", timeout=10, channel=ch)
    assert (resubscribed["recovered"], resubscribed["wasRecovering"]) == (True, True)
    recovered = [await js.wait("publication", channel=ch) for _ in range(3)]
    assert [(p["offset"], js_bytes(p["data"])) for p in recovered] == [(i, {"n": i}) for i in (2, 3, 4)]


async def test_python_protobuf_client_round_trip(server: ServerProcess, py_factory: PyFactory) -> None:
    ch = unique_channel("chat:")
    py = await py_factory(server, "pb-py", use_protobuf=True)
    sub = await py.subscribe(ch)
    await sub.publish(b'{"x":1}')
    pub = (await py.wait("publication", ch)).ctx.pub
    assert (pub.data, pub.offset) == (b'{"x":1}', 1)
    await server.api_result("publish", {"channel": ch, "data": {"x": 2}})
    assert (await py.wait("publication", ch)).ctx.pub.data == b'{"x": 2}'  # as the API request had it
    history = await sub.history(limit=-1)
    assert [(p.offset, json.loads(p.data)) for p in history.publications] == [(1, {"x": 1}), (2, {"x": 2})]
    stats = await sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1)


# --- a raw protobuf client: negotiation and bad input -------------------------------------------------------


def frame_of(*commands: pb.Command) -> bytes:
    return b"".join(varint(len(body)) + body for body in (c.SerializeToString() for c in commands))


def replies(data: bytes) -> list[pb.Reply]:
    out = []
    for chunk in split_delimited(data):
        reply = pb.Reply()
        reply.ParseFromString(chunk)
        out.append(reply)
    return out


def connect_command(server: ServerProcess, user: str) -> pb.Command:
    cmd = pb.Command(id=1)
    cmd.connect.token = server.token(user)
    return cmd


async def test_negotiation_by_query_and_subprotocol(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for url, protocols in ((server.ws_url + "?cf_protocol=protobuf", ()),
                               (server.ws_url + "?format=protobuf", ()),
                               (server.ws_url, ("centrifuge-protobuf",))):
            async with http.ws_connect(url, protocols=protocols) as ws:
                await ws.send_bytes(frame_of(connect_command(server, "raw-pb")))
                msg = await ws.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.BINARY, (url, msg)
                (reply,) = replies(msg.data)
                assert reply.id == 1 and reply.connect.client and reply.connect.ping > 0, (url, reply)
        async with http.ws_connect(server.ws_url, protocols=("centrifuge-json",)) as ws:
            assert ws.protocol == "centrifuge-json"
            await ws.send_str(json.dumps({"id": 1, "connect": {"token": server.token("raw-json")}}))
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data)["connect"]["client"]


async def test_several_commands_in_one_frame_and_delta_accepted(server: ServerProcess) -> None:
    ch = unique_channel("chat:")
    sub = pb.Command(id=2)
    sub.subscribe.channel = ch
    sub.subscribe.delta = "fossil"
    sub.subscribe.recoverable = True
    stats = pb.Command(id=3)
    stats.presence_stats.channel = ch
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url + "?cf_protocol=protobuf") as ws:
        await ws.send_bytes(frame_of(connect_command(server, "raw-pb2"), sub, stats))
        got: dict[int, pb.Reply] = {}
        while len(got) < 3:
            msg = await ws.receive(timeout=5)
            got.update((r.id, r) for r in replies(msg.data))
        # Fossil delta is offered to protobuf subscribers too, as in Centrifugo (patches travel as bytes).
        assert got[2].subscribe.recoverable and got[2].subscribe.delta
        assert got[3].presence_stats.num_clients == 1
        await server.api_result("publish", {"channel": ch, "data": {"n": 1}})
        msg = await ws.receive(timeout=5)
        (push,) = replies(msg.data)
        assert push.push.channel == ch
        assert push.push.pub.data == b'{"n": 1}' and not push.push.pub.delta  # the first one in full


@pytest.mark.parametrize("payload", [b"\x05\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b""])
async def test_undecodable_frames_disconnect_with_3501(server: ServerProcess, payload: bytes) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url + "?cf_protocol=protobuf") as ws:
        await ws.send_bytes(payload)
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 3501, msg


async def test_text_frames_are_bad_requests_and_binary_payloads_are_published(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url + "?cf_protocol=protobuf") as ws:
            await ws.send_str('{"id":1,"connect":{}}')
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 3501, msg
        async with http.ws_connect(server.ws_url + "?cf_protocol=protobuf") as ws:
            publish = pb.Command(id=2)
            publish.publish.channel = unique_channel("chat:")
            publish.publish.data = b"\x00\x01not json"
            await ws.send_bytes(frame_of(connect_command(server, "raw-pb3"), publish))
            got: dict[int, pb.Reply] = {}
            while 2 not in got:
                msg = await ws.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.BINARY, msg  # no 3501: protobuf payloads are opaque bytes
                got.update((r.id, r) for r in replies(msg.data))
            # "chat" allows publishing for subscribers only: the binary payload passed decoding and got to the
            # permission check.
            assert got[2].error.code == 103


async def test_binary_payload_reaches_protobuf_subscribers_and_closes_json_ones_with_3506(
    server: ServerProcess,
) -> None:
    ch = unique_channel("bin-")  # no namespace, no history: the payload is only delivered live
    sub_pb = pb.Command(id=2)
    sub_pb.subscribe.channel = ch
    async with (aiohttp.ClientSession() as http,
                http.ws_connect(server.ws_url + "?cf_protocol=protobuf") as pb_ws,
                http.ws_connect(server.ws_url) as json_ws):
        await pb_ws.send_bytes(frame_of(connect_command(server, "bin-pb"), sub_pb))
        await json_ws.send_str(json.dumps({"id": 1, "connect": {"token": server.token("bin-json")}}) + "\n"
                               + json.dumps({"id": 2, "subscribe": {"channel": ch}}))
        for ws in (pb_ws, json_ws):  # both replies (connect, subscribe)
            seen: set[int] = set()
            while seen != {1, 2}:
                msg = await ws.receive(timeout=5)
                if msg.type is aiohttp.WSMsgType.BINARY:
                    seen.update(r.id for r in replies(msg.data))
                else:
                    seen.update(json.loads(line)["id"] for line in msg.data.split("\n"))
        payload = b"\x00\xffnot json"
        await server.api_result("publish", {"channel": ch, "b64data": base64.b64encode(payload).decode()})
        (push,) = replies((await pb_ws.receive(timeout=5)).data)
        assert push.push.pub.data == payload
        closed = await json_ws.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 3506, closed
