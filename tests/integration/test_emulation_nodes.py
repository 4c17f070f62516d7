"""Emulation across nodes: a POST /emulation that lands on another node than the one holding the session is
forwarded to that node through the control channel (two server processes on the Redis engine), JSON and
protobuf requests alike."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from harness import ServerFactory, unique_channel, wait_until
from redis_servers import RedisStandalone
from test_transports import frame_of, read_reply

from node.protocol import client_pb2 as pb


async def test_emulation_request_on_another_node_reaches_the_session(
        server_factory: ServerFactory, redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    config = {"engine": {"type": "redis", "redis": {"address": [redis_standalone.url], "prefix": redis_prefix}},
              "http_stream": {"enabled": True}}
    a = await server_factory(config, name="node-a")
    b = await server_factory(config, name="node-b")
    ch = unique_channel("chat:")
    connect = {"id": 1, "connect": {"token": a.token("dave")}}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
        session.post(f"{a.http_url}/connection/http_stream", data=json.dumps(connect)) as stream,
    ):
        async def message() -> dict[str, Any]:
            while True:
                line = await stream.content.readline()
                assert line, "the stream ended"
                msg: dict[str, Any] = json.loads(line)
                if msg:  # skip pings
                    return msg

        result = (await message())["connect"]
        session_id, node_id = result["session"], result["node"]

        async def forwarded() -> bool:
            # B answers 404 until it has heard of node A (nodes announce themselves on start).
            body = {"session": session_id, "node": node_id,
                    "data": json.dumps({"id": 2, "subscribe": {"channel": ch}})}
            async with session.post(f"{b.http_url}/emulation", json=body) as resp:
                return resp.status == 204

        await wait_until(forwarded, timeout=10)
        assert (await message()) == {"id": 2, "subscribe": {}}
        await b.api_result("publish", {"channel": ch, "data": {"via": "B"}})
        push = (await message())["push"]
        assert push["channel"] == ch and push["pub"]["data"] == {"via": "B"}


async def test_protobuf_emulation_request_crosses_nodes_as_bytes(
        server_factory: ServerFactory, redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    """A protobuf command frame is binary (here not even valid UTF-8): it must reach the other node unchanged."""
    config = {"engine": {"type": "redis", "redis": {"address": [redis_standalone.url], "prefix": redis_prefix}},
              "http_stream": {"enabled": True}}
    a = await server_factory(config, name="node-a")
    b = await server_factory(config, name="node-b")
    ch = unique_channel("chat:")
    connect, subscribe, publish = pb.Command(id=1), pb.Command(id=2), pb.Command(id=3)
    connect.connect.token = a.token("erin")
    subscribe.subscribe.channel = ch
    publish.publish.channel = ch
    publish.publish.data = json.dumps({"text": "é" * 100}).encode()  # > 127 bytes: a 2-byte length prefix
    frame = frame_of(subscribe, publish)
    with pytest.raises(UnicodeDecodeError):
        frame.decode()
    headers = {"Content-Type": "application/octet-stream"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
        session.post(f"{a.http_url}/connection/http_stream", data=frame_of(connect), headers=headers) as stream,
    ):
        async def reply() -> pb.Reply:
            while True:
                got = await read_reply(stream.content)
                if got.ByteSize():  # skip pings
                    return got

        result = (await reply()).connect
        body = pb.EmulationRequest(node=result.node, session=result.session, data=frame).SerializeToString()

        async def forwarded() -> bool:
            async with session.post(f"{b.http_url}/emulation", data=body, headers=headers) as resp:
                return resp.status == 204  # 404 until B has heard of node A

        await wait_until(forwarded, timeout=10)
        replies = [await reply() for _ in range(3)]
        assert [r.id for r in replies if r.id] == [2, 3]
        [push] = [r.push for r in replies if not r.id]
        assert push.channel == ch and json.loads(push.pub.data) == {"text": "é" * 100}
