"""HTTP-streaming and SSE (bidirectional emulation through /emulation, driven by centrifuge-js with fetch and
the eventsource package; HTTP-streaming also with centrifuge-js's protobuf build and a raw protobuf client) and
the unidirectional transports (uni_sse, uni_http_stream, uni_websocket, read with plain aiohttp), against a real
server. Also the endpoint errors: 400, 404, 413, 403, and a disabled transport."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from harness import ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsClient

from node.protocol import client_pb2 as pb
from node.protocol.proto import split_delimited, varint
from node.protocol.unistream_pb2_grpc import CentrifugoUniStreamStub

GOOD_ORIGIN = "http://good.example"
TRANSPORTS_CONFIG: dict[str, Any] = {
    "client": {"allowed_origins": [GOOD_ORIGIN], "ping_interval": "2s", "pong_timeout": "1s"},
    "rpc": {"ping": {"enabled": True, "method": "ping"}},
    "http_stream": {"enabled": True},
    "sse": {"enabled": True},
    "emulation": {"max_request_body_size": 1024},
    "uni_websocket": {"enabled": True},
    "uni_sse": {"enabled": True},
    "uni_http_stream": {"enabled": True},
}


@pytest.fixture(scope="module")
def transports_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp)
    yield factory.start_sync(TRANSPORTS_CONFIG, name="transports")
    factory.close_sync()


@asynccontextmanager
async def emulated_client(server: ServerProcess, transport: str, protocol: str = "json") -> AsyncIterator[JsClient]:
    prefix = "/connection/http_stream" if transport == "http_stream" else "/connection/sse"
    options = {
        "protocol": protocol,
        "transports": [{"transport": transport, "endpoint": f"{server.http_url}{prefix}"}],
        "emulationEndpoint": f"{server.http_url}/emulation",
    }
    client = JsClient(server.ws_url, options, name=f"js-{transport}-{protocol}")
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize("transport", ["http_stream", "sse"])
async def test_centrifuge_js_over_emulation(transports_server: ServerProcess, transport: str) -> None:
    server = transports_server
    ch = unique_channel("chat:")
    async with emulated_client(server, transport) as js:
        await js.call("connect", token=server.token("alice"), wait=True)
        assert (await js.wait("connected"))["transport"] == transport
        await js.call("subscribe", channel=ch, recoverable=True, wait=True)

        await server.api_result("publish", {"channel": ch, "data": {"n": 1}})
        assert (await js.wait("publication", channel=ch))["data"] == {"n": 1}
        # Client commands travel through POST /emulation.
        await js.call("publish", channel=ch, data={"n": 2})
        assert (await js.wait("publication", channel=ch))["data"] == {"n": 2}
        history = await js.call("history", channel=ch, limit=10)
        assert [p["data"] for p in history["publications"]] == [{"n": 1}, {"n": 2}]
        assert await js.call("rpc", method="ping", data={}) is not None

        # Publications missed while disconnected are recovered on reconnect.
        await js.call("disconnect")
        await js.wait("disconnected")
        await server.api_result("publish", {"channel": ch, "data": {"n": 3}})
        await js.call("connect", wait=True)
        subscribed = await js.wait("subscribed", channel=ch, wasRecovering=True)
        assert subscribed["recovered"]
        assert (await js.wait("publication", channel=ch))["data"] == {"n": 3}


# --- protobuf over HTTP-streaming and /emulation ------------------------------------------------------------

OCTET_STREAM = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}


def js_bytes(value: Any) -> Any:
    """The driver reports Uint8Array payloads as {"__bytes__": base64}: decode them as the JSON they hold."""
    assert isinstance(value, dict) and "__bytes__" in value, value
    return json.loads(base64.b64decode(value["__bytes__"]))


async def test_centrifuge_js_protobuf_over_http_stream(transports_server: ServerProcess) -> None:
    server = transports_server
    ch = unique_channel("chat:")
    async with emulated_client(server, "http_stream", "protobuf") as js:
        # The protobuf build reads the stream as varint-delimited Replies: a JSON answer would never connect.
        await js.call("connect", token=server.token("pb-stream"), wait=True)
        assert (await js.wait("connected"))["transport"] == "http_stream"
        await js.call("subscribe", channel=ch, recoverable=True, wait=True)

        await server.api_result("publish", {"channel": ch, "data": {"n": 1}})
        assert js_bytes((await js.wait("publication", channel=ch))["data"]) == {"n": 1}
        # Commands after connect travel as protobuf EmulationRequests through POST /emulation.
        await js.call("publish", channel=ch, data='{"n":2}')
        mine = await js.wait("publication", channel=ch)
        assert js_bytes(mine["data"]) == {"n": 2} and mine["info"]["user"] == "pb-stream"
        history = await js.call("history", channel=ch, limit=10)
        assert [(p["offset"], js_bytes(p["data"])) for p in history["publications"]] == [(1, {"n": 1}), (2, {"n": 2})]
        assert await js.call("rpc", method="ping", data="{}") is not None


def frame_of(*commands: pb.Command) -> bytes:
    return b"".join(varint(len(body)) + body for body in (c.SerializeToString() for c in commands))


async def read_reply(stream: aiohttp.StreamReader) -> pb.Reply:
    """The next varint-length-prefixed Reply of a protobuf stream."""
    length, shift = 0, 0
    while True:
        byte = (await stream.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    reply = pb.Reply()
    reply.ParseFromString(await stream.readexactly(length))
    return reply


def emulation_request(node: str, session: str, *commands: pb.Command) -> bytes:
    return pb.EmulationRequest(node=node, session=session, data=frame_of(*commands)).SerializeToString()


async def test_raw_protobuf_http_stream_and_emulation(transports_server: ServerProcess) -> None:
    server = transports_server
    ch = unique_channel("chat:")
    connect = pb.Command(id=1)
    connect.connect.token = server.token("pb-raw")
    subscribe = pb.Command(id=2)
    subscribe.subscribe.channel = ch
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
        http.post(f"{server.http_url}/connection/http_stream", data=frame_of(connect), headers=OCTET_STREAM) as resp,
    ):
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/octet-stream"
        reply = await read_reply(resp.content)
        assert reply.id == 1 and reply.connect.client and reply.connect.session and reply.connect.node

        body = emulation_request(reply.connect.node, reply.connect.session, subscribe)
        async with http.post(f"{server.http_url}/emulation", data=body, headers=OCTET_STREAM) as emulated:
            assert emulated.status == 204
        subscribed = await read_reply(resp.content)
        assert subscribed.id == 2 and subscribed.HasField("subscribe")

        await server.api_result("publish", {"channel": ch, "data": {"raw": True}})
        push = (await read_reply(resp.content)).push
        assert push.channel == ch and json.loads(push.pub.data) == {"raw": True}

        # A JSON emulation request is decoded with the session's protocol: not protobuf, so a bad request.
        json_body = {"session": reply.connect.session, "node": reply.connect.node,
                     "data": json.dumps({"id": 3, "subscribe": {"channel": ch}})}
        async with http.post(f"{server.http_url}/emulation", json=json_body) as emulated:
            assert emulated.status == 204
        disconnect = (await read_reply(resp.content)).push.disconnect
        assert (disconnect.code, disconnect.reason) == (3501, "bad request")
        assert await resp.content.read() == b"", "the stream ends after the disconnect push"


async def test_protobuf_endpoint_errors(transports_server: ServerProcess) -> None:
    server = transports_server
    # Undecodable protobuf, a valid message without commands, and a JSON body sent as protobuf: 400.
    for body in (b"\xff\xff\xff", emulation_request("n", "s"), b'{"session":"s","node":"n","data":"{}"}'):
        status, _, _ = await server.http("POST", "/emulation", body=body, headers=OCTET_STREAM)
        assert status == 400, body
    status, _, _ = await server.http("POST", "/emulation", body=emulation_request("nope", "s", pb.Command(id=1)),
                                     headers=OCTET_STREAM)
    assert status == 404
    big = pb.Command(id=1)
    big.publish.channel, big.publish.data = "chat:x", b'"' + b"x" * 2000 + b'"'
    status, _, _ = await server.http("POST", "/emulation", body=emulation_request("n", "s", big), headers=OCTET_STREAM)
    assert status == 413
    status, headers, _ = await server.http("POST", "/emulation", body=emulation_request("nope", "s", big),
                                           headers={**OCTET_STREAM, "Origin": "http://evil.example"})
    assert status == 403
    status, headers, _ = await server.http("POST", "/emulation", body=emulation_request("nope", "s", pb.Command(id=1)),
                                           headers={**OCTET_STREAM, "Origin": GOOD_ORIGIN})
    assert status == 404 and headers["Access-Control-Allow-Origin"] == GOOD_ORIGIN

    # The stream itself: an empty body is 400, an undecodable one a protobuf disconnect push.
    status, _, _ = await server.http("POST", "/connection/http_stream", body=b"", headers=OCTET_STREAM)
    assert status == 400
    status, headers, body = await server.http("POST", "/connection/http_stream", body=b"\x05ab",
                                              headers=OCTET_STREAM)
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    [chunk] = split_delimited(body)
    reply = pb.Reply()
    reply.ParseFromString(chunk)
    assert (reply.push.disconnect.code, reply.push.disconnect.reason) == (3501, "bad request")


# --- unidirectional ------------------------------------------------------------------------------------------


async def _lines(resp: aiohttp.ClientResponse, sse: bool) -> AsyncIterator[dict[str, Any]]:
    """The messages of a stream: JSON lines, or the ``data:`` of SSE events."""
    async for raw in resp.content:
        line = raw.strip()
        if sse:
            if not line.startswith(b"data: "):
                continue
            line = line[len(b"data: "):]
        if line:
            yield json.loads(line)


async def _ws_messages(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[dict[str, Any]]:
    """The messages of a unidirectional WebSocket: JSON text frames (lines, if several share a frame)."""
    while True:
        msg = await ws.receive(timeout=15)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return
        for line in msg.data.split("\n"):
            if line:
                yield json.loads(line)


async def _grpc_messages(stream: Any) -> AsyncIterator[dict[str, Any]]:
    """The pushes of a unidirectional GRPC stream as the JSON transports spell them: a publication's JSON
    payload decoded, default fields left out (so a ping is ``{}``)."""
    while (push := await asyncio.wait_for(stream.read(), 15)) is not grpc.aio.EOF:
        message = json_format.MessageToDict(push, preserving_proto_field_name=True)
        if "pub" in message and "data" in message["pub"]:
            message["pub"]["data"] = json.loads(push.pub.data)
        yield message


@asynccontextmanager
async def uni_stream(server: ServerProcess, kind: str, request: dict[str, Any]) -> AsyncIterator[
        AsyncIterator[dict[str, Any]]]:
    """A unidirectional connection of ``kind`` (uni_sse, uni_http_stream, uni_websocket, uni_grpc) made with
    the connect ``request``; yields its messages as JSON objects."""
    if kind == "uni_grpc":
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.config['uni_grpc']['port']}") as channel:
            stream = CentrifugoUniStreamStub(channel).Consume(json_format.ParseDict(request, pb.ConnectRequest()))
            yield _grpc_messages(stream).__aiter__()
            stream.cancel()
        return
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        if kind == "uni_websocket":
            async with session.ws_connect(f"ws://{server.host}:{server.port}/connection/uni_websocket") as ws:
                await ws.send_str(json.dumps(request))
                yield _ws_messages(ws).__aiter__()
            return
        if kind == "uni_sse":
            url = f"{server.http_url}/connection/uni_sse?cf_connect={quote(json.dumps(request))}"
            ctx = session.get(url)
        else:
            ctx = session.post(f"{server.http_url}/connection/uni_http_stream", data=json.dumps(request))
        async with ctx as resp:
            assert resp.status == 200
            if kind == "uni_sse":
                assert resp.headers["Content-Type"].startswith("text/event-stream")
            yield _lines(resp, kind == "uni_sse").__aiter__()


@pytest.mark.parametrize("kind", ["uni_sse", "uni_http_stream"])
async def test_uni_http_streams(transports_server: ServerProcess, kind: str) -> None:
    server = transports_server
    ch = unique_channel("plain")
    async with uni_stream(server, kind, {"token": server.token("bob", channels=[ch])}) as messages:
        connect = (await anext(messages))["connect"]
        assert connect["client"] and ch in connect["subs"] and "pong" not in connect
        await server.api_result("publish", {"channel": ch, "data": {"hello": kind}})
        assert await anext(messages) == {"channel": ch, "pub": {"data": {"hello": kind}}}
        assert await anext(messages) == {}, "a ping is an empty push"


@pytest.mark.parametrize("kind", ["uni_sse", "uni_http_stream"])
async def test_uni_connect_errors_end_with_disconnect_push(transports_server: ServerProcess, kind: str) -> None:
    server = transports_server
    async with uni_stream(server, kind, {"token": "not-a-jwt"}) as messages:
        assert await anext(messages) == {"disconnect": {"code": 3500, "reason": "invalid token"}}
        with pytest.raises(StopAsyncIteration):
            await anext(messages)
    async with uni_stream(server, kind, {"token": server.token("bob", ttl=-10)}) as messages:
        assert (await anext(messages))["disconnect"]["code"] == 3005, "token expired (109) maps to 3005"


async def test_uni_websocket(transports_server: ServerProcess) -> None:
    server = transports_server
    ch = unique_channel("plain")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://{server.host}:{server.port}/connection/uni_websocket") as ws,
    ):
        await ws.send_str(json.dumps({"token": server.token("carol", channels=[ch])}))
        connect = json.loads(await ws.receive_str(timeout=5))["connect"]
        assert ch in connect["subs"]
        await server.api_result("publish", {"channel": ch, "data": "x"})
        assert json.loads(await ws.receive_str(timeout=5)) == {"channel": ch, "pub": {"data": "x"}}
        assert json.loads(await ws.receive_str(timeout=5)) == {}
        await server.api_result("disconnect", {"user": "carol"})
        assert json.loads(await ws.receive_str(timeout=5)) == {
            "disconnect": {"code": 3503, "reason": "force disconnect"}}
        close = await ws.receive(timeout=5)
        assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 3503

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://{server.host}:{server.port}/connection/uni_websocket") as ws,
    ):
        await ws.send_str("{}")  # no token, anonymous access not allowed
        assert json.loads(await ws.receive_str(timeout=5)) == {"disconnect": {"code": 3501, "reason": "bad request"}}


# --- endpoint errors ------------------------------------------------------------------------------------------


async def test_emulation_endpoint_errors(transports_server: ServerProcess) -> None:
    server = transports_server
    status, _, _ = await server.http("POST", "/emulation", body=b"not json", headers=JSON)
    assert status == 400
    status, _, _ = await server.http("POST", "/emulation", json_body={"session": "s", "node": 1, "data": "{}"})
    assert status == 400
    status, _, _ = await server.http("POST", "/emulation", json_body={"session": "s", "node": "nope", "data": "{}"})
    assert status == 404
    status, _, _ = await server.http("POST", "/emulation",
                                     json_body={"session": "s", "node": "n", "data": "x" * 2000})
    assert status == 413
    status, _, _ = await server.http("POST", "/emulation", json_body={"session": "s", "node": "nope", "data": "{}"},
                                     headers={"Origin": "http://evil.example"})
    assert status == 403


async def test_origin_and_cors(transports_server: ServerProcess) -> None:
    server = transports_server
    for method, path in (("POST", "/connection/http_stream"), ("GET", "/connection/sse?cf_connect=%7B%7D"),
                         ("POST", "/connection/uni_http_stream"), ("GET", "/connection/uni_sse"),
                         ("GET", "/connection/uni_websocket")):
        status, _, _ = await server.http(method, path, body=b"{}", headers={"Origin": "http://evil.example"})
        assert status == 403, path
    status, headers, _ = await server.http("OPTIONS", "/connection/http_stream", headers={
        "Origin": GOOD_ORIGIN, "Access-Control-Request-Headers": "content-type"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == GOOD_ORIGIN
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Allow-Headers"] == "content-type"
    # A connect error still ends a stream that was opened with an allowed origin.
    status, headers, body = await server.http("POST", "/connection/uni_http_stream", body=b'{"token":"x"}',
                                              headers={"Origin": GOOD_ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == GOOD_ORIGIN
    assert json.loads(body) == {"disconnect": {"code": 3500, "reason": "invalid token"}}


async def test_bad_connection_requests(transports_server: ServerProcess) -> None:
    server = transports_server
    status, _, _ = await server.http("POST", "/connection/http_stream", body=b"")
    assert status == 400
    status, _, _ = await server.http("POST", "/connection/http_stream", body=b"x" * 70000)
    assert status == 413
    status, _, _ = await server.http("POST", "/connection/uni_http_stream", body=b"x" * 70000)
    assert status == 413
    # aiohttp would label a bytes body application/octet-stream, which asks for protobuf.
    status, _, body = await server.http("POST", "/connection/http_stream", body=b"garbage", headers=JSON)
    assert status == 200 and json.loads(body) == {"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}


async def test_transports_are_off_by_default(module_server: ServerProcess) -> None:
    for method, path in (("POST", "/connection/http_stream"), ("GET", "/connection/sse"),
                         ("POST", "/emulation"), ("GET", "/connection/uni_sse"),
                         ("POST", "/connection/uni_http_stream"), ("GET", "/connection/uni_websocket")):
        status, _, _ = await module_server.http(method, path, body=b"{}")
        assert status in (404, 405), path


async def test_slow_stream_reader_is_disconnected(server_factory: ServerFactory) -> None:
    """A unidirectional HTTP-stream client that stops reading is cut by client.queue_max_size, as on WebSocket."""
    server = await server_factory({"uni_http_stream": {"enabled": True}, "client": {"queue_max_size": 65536}})
    ch = unique_channel("plain")
    reader, writer = await asyncio.open_connection(server.host, server.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"token": server.token("slow", channels=[ch])}).encode()
    writer.write(b"POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()
    await reader.readuntil(b'"connect"')

    async def gone() -> bool:
        await server.api_result("publish", {"channel": ch, "data": "x" * 100_000})
        return (await server.api_result("presence_stats", {"channel": ch}))["num_clients"] == 0

    try:
        await wait_until(gone, timeout=20, interval=0)
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["uni_sse", "uni_http_stream"])
async def test_connect_code_to_http_response(server_factory: ServerFactory, kind: str) -> None:
    """With the transforms on, a refused connect whose code is listed becomes a plain HTTP response (the stream
    never starts); other refusals still get a disconnect push, and a good connect streams as usual."""
    transforms = {"enabled": True, "transforms": [
        {"code": 3500, "to": {"status_code": 401, "body": "bad token"}},  # a disconnect code (invalid token)
        {"code": 109, "to": {"status_code": 403, "body": "token expired"}},  # an error code (expired token)
    ]}
    server = await server_factory({kind: {"enabled": True, "connect_code_to_http_response": transforms}})

    async def attempt(request: dict[str, Any]) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            if kind == "uni_sse":
                ctx = session.get(f"{server.http_url}/connection/uni_sse?cf_connect={quote(json.dumps(request))}")
            else:
                ctx = session.post(f"{server.http_url}/connection/uni_http_stream", data=json.dumps(request))
            async with ctx as resp:
                return resp.status, await resp.text()

    assert await attempt({"token": "not-a-jwt"}) == (401, "bad token")
    assert await attempt({"token": server.token("dave", ttl=-10)}) == (403, "token expired")
    async with uni_stream(server, kind, {"token": 5}) as messages:  # 3501, not listed: the usual stream
        assert await anext(messages) == {"disconnect": {"code": 3501, "reason": "bad request"}}
        with pytest.raises(StopAsyncIteration):
            await anext(messages)
    async with uni_stream(server, kind, {"token": server.token("erin")}) as messages:
        assert "connect" in await anext(messages), "a good connect still streams"


async def test_uni_websocket_join_push_messages(server_factory: ServerFactory) -> None:
    server = await server_factory({"uni_websocket": {"enabled": True, "join_push_messages": True}})
    ch = unique_channel("plain")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://{server.host}:{server.port}/connection/uni_websocket") as ws,
    ):
        await ws.send_str(json.dumps({"token": server.token("joiner", channels=[ch])}))
        assert "connect" in json.loads(await ws.receive_str(timeout=5))
        # One API batch: three publications handled together, so they leave in one flush, hence one frame.
        await server.api_result("batch", {"commands": [{"publish": {"channel": ch, "data": i}} for i in range(3)]})
        frame = await ws.receive_str(timeout=5)
        assert [json.loads(line) for line in frame.split("\n")] == [
            {"channel": ch, "pub": {"data": i}} for i in range(3)]
