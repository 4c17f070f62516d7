"""The unidirectional GRPC stream with a real grpcio client and the committed stubs: the connect push with the
token's channels, publications (JSON and binary payloads), pings, a server disconnect ending the stream, and
refused connects."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from harness import ServerFactory, ServerProcess, free_port, unique_channel, wait_until

from node.protocol import client_pb2 as pb
from node.protocol.unistream_pb2_grpc import CentrifugoUniStreamStub


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp)
    # An expired token (error 109) ends the stream with the configured disconnect instead of the default 3005.
    transform = {"code": 109, "to": {"code": 4109, "reason": "get a new token"}}
    config = {"uni_grpc": {"enabled": True, "address": "127.0.0.1", "port": free_port()},
              "client": {"ping_interval": "2s", "pong_timeout": "1s",
                         "connect_code_to_unidirectional_disconnect": {"enabled": True, "transforms": [transform]}}}
    yield factory.start_sync(config)
    factory.close_sync()


@pytest.fixture
async def stub(srv: ServerProcess) -> AsyncIterator[CentrifugoUniStreamStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.config['uni_grpc']['port']}") as channel:
        yield CentrifugoUniStreamStub(channel)


async def next_push(stream: grpc.aio.UnaryStreamCall, timeout: float = 5.0) -> pb.Push:  # type: ignore[type-arg]
    push = await asyncio.wait_for(stream.read(), timeout)
    assert push is not grpc.aio.EOF, "the stream ended"
    assert isinstance(push, pb.Push)
    return push


async def test_connect_push_publications_pings_and_server_disconnect(
    srv: ServerProcess, stub: CentrifugoUniStreamStub
) -> None:
    ch = unique_channel("chat:")
    stream = stub.Consume(pb.ConnectRequest(token=srv.token("uni-grpc", channels=[ch])))
    connect = await next_push(stream)
    assert connect.connect.client and connect.connect.ping == 2
    assert ch in connect.connect.subs and connect.connect.subs[ch].recoverable is False

    await srv.api_result("publish", {"channel": ch, "data": {"text": "hi"}})
    pub = await next_push(stream)
    assert pub.channel == ch and json.loads(pub.pub.data) == {"text": "hi"} and pub.pub.offset == 1

    binary = b"\x00\x01\xfe"
    await srv.api_result("publish", {"channel": ch, "b64data": base64.b64encode(binary).decode()})
    assert (await next_push(stream)).pub.data == binary, "GRPC carries any bytes"

    ping = await next_push(stream, timeout=5)
    assert ping == pb.Push(), "a ping is the empty Push"

    await srv.api_result("disconnect", {"user": "uni-grpc", "disconnect": {"code": 4100, "reason": "bye"}})
    bye = await next_push(stream)
    assert (bye.disconnect.code, bye.disconnect.reason) == (4100, "bye")
    assert await asyncio.wait_for(stream.read(), 5) is grpc.aio.EOF
    assert await stream.code() is grpc.StatusCode.OK


async def test_refused_connects_end_with_a_disconnect_push(srv: ServerProcess, stub: CentrifugoUniStreamStub) -> None:
    bad_token = stub.Consume(pb.ConnectRequest(token="not-a-jwt"))
    push = await next_push(bad_token)
    assert push.disconnect.code == 3500, push
    assert await asyncio.wait_for(bad_token.read(), 5) is grpc.aio.EOF

    expired = stub.Consume(pb.ConnectRequest(token=srv.token("uni-old", ttl=-10)))
    push = await next_push(expired)
    assert (push.disconnect.code, push.disconnect.reason) == (4109, "get a new token"), "the configured transform"

    # Connect data is an opaque payload in protobuf: binary data is no reason to refuse.
    binary = stub.Consume(pb.ConnectRequest(token=srv.token("uni-bin"), data=b"\x00not json"))
    assert (await next_push(binary)).connect.client


async def test_cancelled_stream_removes_the_client(srv: ServerProcess, stub: CentrifugoUniStreamStub) -> None:
    ch = unique_channel("chat:")
    stream = stub.Consume(pb.ConnectRequest(token=srv.token("uni-gone", channels=[ch])))
    await next_push(stream)
    stats = await srv.api_result("presence_stats", {"channel": ch})
    assert stats["num_clients"] == 1
    stream.cancel()

    async def gone() -> bool:
        return (await srv.api_result("presence_stats", {"channel": ch}))["num_clients"] == 0

    # The server notices the cancelled RPC on its own schedule.
    await wait_until(gone, timeout=5, what="the client of a cancelled stream is removed (and leaves presence)")
