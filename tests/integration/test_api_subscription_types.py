"""The server API's stream methods on map and shared poll channels, over HTTP and over GRPC (a real grpcio client
with the committed stubs), as Centrifugo 6.8's internal/api/api.go answers them: ``publish`` (alone or in a
batch) is stream-only, 107 for a map or shared poll namespace; ``broadcast`` checks no subscription type, so
each such channel gets its publish result in the broadcast reply, and the publication goes to the channel's
subscribers like any other (centrifuge's memory broker hands it to the hub, where map subscribers are). On
Redis, centrifuge's Redis broker and Redis map broker name a channel's PUB/SUB channel alike (prefix + ".client."
+ channel, both with Centrifugo's default prefix), so a broadcast published on one node reaches the map
subscribers of every node through Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import JsFactory, ServerFactory, ServerProcess, free_port, unique_channel, wait_until
from redis_servers import RedisStandalone

from node.api.proto import api_pb2 as pb
from node.api.proto.api_pb2_grpc import CentrifugoApiStub

GRPC_KEY = "fugato-test-grpc-key"
AUTH = (("authorization", f"apikey {GRPC_KEY}"),)


class Api:
    """The calls of this test over HTTP or GRPC, each answer reduced to (error code, offset) pairs."""

    def __init__(self, srv: ServerProcess, stub: CentrifugoApiStub | None) -> None:
        self.srv, self.stub = srv, stub

    @staticmethod
    def _http(reply: dict[str, Any], result: str = "result") -> tuple[int, int]:
        return reply.get("error", {}).get("code", 0), reply.get(result, {}).get("offset", 0)

    @staticmethod
    def _grpc(reply: Any, result: str = "result") -> tuple[int, int]:
        return reply.error.code, getattr(reply, result).offset

    async def publish(self, channel: str, data: bytes) -> tuple[int, int]:
        if self.stub is None:
            return self._http(await self.srv.api("publish", {"channel": channel, "data": json.loads(data)}))
        return self._grpc(await self.stub.Publish(pb.PublishRequest(channel=channel, data=data), metadata=AUTH))

    async def batch_publish(self, channels: list[str], data: bytes) -> list[tuple[int, int]]:
        if self.stub is None:
            body = await self.srv.api("batch", {"commands": [
                {"publish": {"channel": ch, "data": json.loads(data)}} for ch in channels]})
            return [self._http(reply, "publish") for reply in body["replies"]]
        reply = await self.stub.Batch(pb.BatchRequest(commands=[
            pb.Command(publish=pb.PublishRequest(channel=ch, data=data)) for ch in channels]), metadata=AUTH)
        return [self._grpc(r, "publish") for r in reply.replies]

    async def broadcast(self, channels: list[str], data: bytes) -> list[tuple[int, int]]:
        if self.stub is None:
            body = await self.srv.api_result("broadcast", {"channels": channels, "data": json.loads(data)})
            assert all(set(r) in ({"result"}, {"error"}) for r in body["responses"]), body
            return [self._http(r) for r in body["responses"]]
        reply = await self.stub.Broadcast(pb.BroadcastRequest(channels=channels, data=data), metadata=AUTH)
        assert not reply.HasField("error")
        # Centrifugo sets a result (PublishResult, empty without history) wherever it sets no error.
        assert [r.HasField("result") for r in reply.result.responses] == [
            not r.HasField("error") for r in reply.result.responses]
        return [self._grpc(r) for r in reply.result.responses]


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    return await server_factory({
        "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": free_port(), "key": GRPC_KEY},
        "shared_poll": {"hmac_secret_key": "secret"},
        "channel": {
            # Never called: nothing here tracks a key.
            "proxy": {"shared_poll_refresh": {"endpoint": f"http://127.0.0.1:{free_port()}/refresh"}},
            "namespaces": [
                {"name": "chat", "history_size": 10, "history_ttl": "60s"},
                {"name": "board", "subscription_type": "map", "allow_subscribe_for_client": True,
                 "map": {"mode": "persistent"}},
                {"name": "votes", "subscription_type": "shared_poll"},
            ]},
    })


@pytest.fixture(params=["http", "grpc"])
async def api(request: pytest.FixtureRequest, server: ServerProcess) -> AsyncIterator[Api]:
    if request.param == "http":
        yield Api(server, None)
        return
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.config['grpc_api']['port']}") as channel:
        yield Api(server, CentrifugoApiStub(channel))


async def test_publish_is_stream_only_and_broadcast_answers_per_channel(
        server: ServerProcess, api: Api, js_factory: JsFactory) -> None:
    chat, board, votes = unique_channel("chat:"), unique_channel("board:"), unique_channel("votes:")
    js = await js_factory(server, {"protocol": "json"})
    await js.call("connect", token=server.token("alice"), wait=True)
    await js.call("map_subscribe", channel=board, wait=True)
    assert (await server.api_result("map_publish", {"channel": board, "key": "k", "data": {"n": 1}}))["offset"] == 1

    assert await api.publish(chat, b'{"n":1}') == (0, 1)
    assert await api.publish(board, b'{"n":2}') == (107, 0)
    assert await api.publish(votes, b'{"n":2}') == (107, 0)
    assert await api.batch_publish([board, votes, chat], b'{"n":2}') == [(107, 0), (107, 0), (0, 2)]

    # No error for the map and shared poll channels, the unknown namespace's 102 in its place.
    assert await api.broadcast([chat, board, votes, "nope:x"], b'{"n":3}') == [(0, 3), (0, 0), (0, 0), (102, 0)]
    # The map subscriber gets the broadcast as a keyless publication; the map's own stream did not move.
    seen = await js.wait("map_update", channel=board, key="")
    assert seen["data"] == {"n": 3} and "offset" not in seen
    assert (await server.api_result("map_publish", {"channel": board, "key": "k", "data": {"n": 4}}))["offset"] == 2
    await wait_until(lambda: [e["data"] for e in js.events("map_update")] == [{"n": 1}, {"n": 3}, {"n": 4}],
                     what="the map's next write after the broadcast")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    redis = RedisStandalone(tmp_path / "redis").start()
    yield redis.url
    redis.stop()


async def test_broadcast_reaches_map_subscribers_of_another_node_over_redis(
        redis_url: str, server_factory: ServerFactory, js_factory: JsFactory, redis_prefix: str) -> None:
    redis = {"address": redis_url, "prefix": redis_prefix}
    config: dict[str, Any] = {
        "engine": {"type": "redis", "redis": redis}, "map_broker": {"type": "redis", "redis": redis},
        "channel": {"namespaces": [
            {"name": "board", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "recoverable", "key_ttl": "60s"}}]}}
    a = await server_factory(config, name="node-a")
    b = await server_factory(config, name="node-b")
    board = unique_channel("board:")
    js = await js_factory(b, {"protocol": "json"})
    await js.call("connect", token=b.token("alice"), wait=True)
    await js.call("map_subscribe", channel=board, wait=True)
    assert (await a.api_result("map_publish", {"channel": board, "key": "k", "data": {"n": 1}}))["offset"] == 1
    body = await a.api_result("broadcast", {"channels": [board], "data": {"n": 2}})
    assert body["responses"] == [{"result": {}}], body
    seen = await js.wait("map_update", channel=board, key="")
    assert seen["data"] == {"n": 2} and "offset" not in seen
    assert (await a.api_result("map_publish", {"channel": board, "key": "k", "data": {"n": 3}}))["offset"] == 2
    await wait_until(lambda: [e["data"] for e in js.events("map_update")] == [{"n": 1}, {"n": 2}, {"n": 3}],
                     what="the map's next write after the broadcast, in order")
