"""The connections API (Centrifugo PRO's ``connections``) over HTTP and GRPC: a user's or a channel's
connections on every node of a Redis-backed cluster, with their info and meta."""

from __future__ import annotations

import json
import time

import aiohttp
import grpc
from harness import PyFactory, ServerFactory, ServerProcess, free_port, unique_channel
from redis_servers import RedisStandalone

from node.api.proto import api_pb2 as pb
from node.api.proto.api_pb2_grpc import CentrifugoApiStub


async def test_connections_across_nodes_by_user_and_channel(server_factory: ServerFactory, py_factory: PyFactory,
                                                            redis_standalone: RedisStandalone,
                                                            redis_prefix: str) -> None:
    grpc_port = free_port()
    engine = {"engine": {"type": "redis", "redis": {"address": [redis_standalone.url], "prefix": redis_prefix}}}
    a = await server_factory({**engine, "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": grpc_port},
                              "uni_http_stream": {"enabled": True}})
    b = await server_factory(engine)
    ch = unique_channel()
    started = time.time()
    # As in Centrifugo's docs: a terminal connected over uni_http_stream with a name and version.
    session = aiohttp.ClientSession()
    stream = await session.post(a.http_url + "/connection/uni_http_stream", json={
        "token": a.token("kim", info={"device": "phone"}, meta={"session": "s1"}), "name": "mobile",
        "version": "2.0"})
    try:
        id_a = json.loads(await stream.content.readline())["connect"]["client"]
        on_b = await py_factory(b, token=b.token("kim", meta={"session": "s2"}))
        other = await py_factory(b, "lee")
        await on_b.subscribe(ch)
        await other.subscribe(ch)
        id_b, id_other = (c.events("connected")[0].ctx.client for c in (on_b, other))
        await _check(a, b, ch, grpc_port, started, id_a, id_b, id_other)
    finally:
        stream.close()
        await session.close()


async def _check(a: ServerProcess, b: ServerProcess, ch: str, grpc_port: int, started: float, id_a: str,
                 id_b: str, id_other: str) -> None:

    by_user = (await a.api_result("connections", {"user": "kim"}))["connections"]
    assert set(by_user) == {id_a, id_b}, "both nodes answer"
    entry = by_user[id_a]
    assert (entry["user"], entry["app_name"], entry["app_version"]) == ("kim", "mobile", "2.0")
    assert entry["transport"] == "uni_http_stream" and entry["protocol"] == "json"
    assert entry["info"] == {"device": "phone"} and entry["state"]["meta"] == {"session": "s1"}
    assert entry["connected_at_ms"] >= int(started * 1000) - 1000
    assert by_user[id_b]["state"]["channels"] == {ch: {}}

    by_channel = (await b.api_result("connections", {"channel": ch}))["connections"]
    assert set(by_channel) == {id_b, id_other}
    assert set((await a.api_result("connections"))["connections"]) >= {id_a, id_b, id_other}
    refused = await a.api("connections", {"expression": "user == 'kim'"})
    assert refused["error"]["code"] == 108

    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        response = await CentrifugoApiStub(channel).Connections(pb.ConnectionsRequest(user="kim"))
    assert set(response.result.connections) == {id_a, id_b}
    info = response.result.connections[id_a]
    assert info.app_name == "mobile" and json.loads(info.state.meta) == {"session": "s1"}
    assert json.loads(info.info) == {"device": "phone"} and info.node
