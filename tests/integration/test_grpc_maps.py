"""The map methods of the GRPC server API (Centrifugo 6.8's MapPublish, MapRemove, MapReadState,
MapReadStream, MapStats, MapClear; also in a Batch), called with a real grpcio client and the committed stubs,
on the memory engine and Redis Cluster: a change reaches a centrifuge-js map subscriber, payloads come back
byte for byte, bad requests get Centrifugo's errors."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from harness import JsFactory, ServerFactory, ServerProcess, free_port, unique_channel

from node.api.proto import api_pb2 as pb
from node.api.proto.api_pb2_grpc import CentrifugoApiStub

GRPC_KEY = "fugato-test-grpc-key"
AUTH = (("authorization", f"apikey {GRPC_KEY}"),)
TRANSPORT = (*AUTH, ("x-centrifugo-error-mode", "transport"))


@pytest.fixture
async def server(engine_section: dict[str, Any], server_factory: ServerFactory) -> ServerProcess:
    return await server_factory({
        **engine_section,
        "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": free_port(), "key": GRPC_KEY},
        "channel": {"namespaces": [
            {"name": "board", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "persistent", "min_page_size": 1}},
        ]},
    })


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[CentrifugoApiStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.config['grpc_api']['port']}") as channel:
        yield CentrifugoApiStub(channel)


async def test_map_methods_over_grpc(server: ServerProcess, api: CentrifugoApiStub, js_factory: JsFactory) -> None:
    ch = unique_channel("board:")
    js = await js_factory(server, {"protocol": "protobuf"})  # binary payloads reach it as they are
    await js.call("connect", token=server.token("alice"), wait=True)
    await js.call("map_subscribe", channel=ch, wait=True)
    first = await api.MapPublish(pb.MapPublishRequest(channel=ch, key="a", data=b'{"n": 1}', tags={"t": "x"}),
                                 metadata=AUTH)
    assert not first.HasField("error") and first.result.offset == 1 and first.result.epoch
    update = await js.wait("map_update", channel=ch, key="a")
    assert base64.b64decode(update["data"]["__bytes__"]) == b'{"n": 1}' and update["tags"] == {"t": "x"}
    binary = bytes(range(256))
    await api.MapPublish(pb.MapPublishRequest(channel=ch, key="b", data=binary), metadata=AUTH)
    await api.MapPublish(pb.MapPublishRequest(channel=ch, key="c", data=b"[1,2]"), metadata=AUTH)
    removed = await api.MapRemove(pb.MapRemoveRequest(channel=ch, key="c"), metadata=AUTH)
    assert removed.result.offset == 4 and not removed.result.suppressed
    assert (await js.wait("map_update", channel=ch, key="c", removed=True))["removed"] is True
    assert base64.b64decode((await js.wait("map_update", channel=ch, key="b"))["data"]["__bytes__"]) == binary

    page = await api.MapReadState(pb.MapReadStateRequest(channel=ch, limit=1), metadata=AUTH)
    assert [(e.key, e.data, dict(e.tags)) for e in page.result.entries] == [("a", b'{"n": 1}', {"t": "x"})]
    assert page.result.offset == 4 and page.result.epoch == first.result.epoch and page.result.cursor
    rest = await api.MapReadState(pb.MapReadStateRequest(channel=ch, limit=1, cursor=page.result.cursor),
                                  metadata=AUTH)
    assert [(e.key, e.data) for e in rest.result.entries] == [("b", binary)] and not rest.result.cursor
    stream = await api.MapReadStream(pb.MapReadStreamRequest(channel=ch, since_offset=2,
                                                             since_epoch=first.result.epoch, limit=10),
                                     metadata=AUTH)
    assert [(e.key, e.offset, e.removed) for e in stream.result.entries] == [("c", 3, False), ("c", 4, True)]
    assert (await api.MapStats(pb.MapStatsRequest(channel=ch), metadata=AUTH)).result.num_keys == 2

    cleared = await api.MapClear(pb.MapClearRequest(channel=ch), metadata=AUTH)
    assert cleared.HasField("result") and not cleared.HasField("error")
    assert (await api.MapStats(pb.MapStatsRequest(channel=ch), metadata=AUTH)).result.num_keys == 0


async def test_map_commands_in_a_batch(api: CentrifugoApiStub) -> None:
    ch = unique_channel("board:")
    batch = await api.Batch(pb.BatchRequest(commands=[
        pb.Command(map_publish=pb.MapPublishRequest(channel=ch, key="k", data=b'{"v": 1}')),
        pb.Command(map_stats=pb.MapStatsRequest(channel=ch)),
        pb.Command(map_remove=pb.MapRemoveRequest(channel=ch)),
    ]), metadata=AUTH)
    published, stats, bad = batch.replies
    assert published.map_publish.offset == 1 and stats.map_stats.num_keys == 1 and bad.error.code == 107


async def test_bad_map_calls_get_centrifugo_errors(api: CentrifugoApiStub) -> None:
    # Not a map namespace, an unknown namespace, a missing key: in the response, or as GRPC statuses.
    stream_ns = await api.MapPublish(pb.MapPublishRequest(channel="plain", key="k", data=b"{}"), metadata=AUTH)
    assert stream_ns.error.code == 107 and not stream_ns.HasField("result")
    unknown = await api.MapReadState(pb.MapReadStateRequest(channel="nowhere:x"), metadata=AUTH)
    assert unknown.error.code == 102
    no_key = await api.MapRemove(pb.MapRemoveRequest(channel=unique_channel("board:")), metadata=AUTH)
    assert no_key.error.code == 107
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.MapStats(pb.MapStatsRequest(channel="plain"), metadata=TRANSPORT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.MapClear(pb.MapClearRequest(channel=unique_channel("board:")))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_write_conditions_over_grpc(server: ServerProcess, api: CentrifugoApiStub) -> None:
    ch = unique_channel("board:")

    async def publish(**fields: Any) -> Any:
        reply = await api.MapPublish(pb.MapPublishRequest(channel=ch, key="k", data=b"{}", **fields), metadata=AUTH)
        assert not reply.HasField("error"), reply
        return reply.result

    first = await publish(key_mode="if_new", version=5, idempotency_key="once")
    assert first.offset == 1 and not first.suppressed
    assert (await publish(idempotency_key="once")).suppress_reason == "idempotency"
    assert (await publish(key_mode="if_new")).suppress_reason == "key_exists"
    stale = await publish(version=4)
    assert (stale.suppressed, stale.suppress_reason, stale.offset, stale.epoch) == (True, "version", 1, first.epoch)
    assert not (await publish(version=6, version_epoch="")).suppressed
    removed = await api.MapRemove(pb.MapRemoveRequest(channel=ch, key="nope"), metadata=AUTH)
    assert removed.result.suppressed and removed.result.suppress_reason == "key_not_found"
    bad = await api.MapPublish(pb.MapPublishRequest(channel=ch, key="k", data=b"{}", key_mode="sometimes"),
                               metadata=AUTH)
    assert bad.error.code == 107
