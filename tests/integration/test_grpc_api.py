"""The server API over GRPC, called with a real grpcio client and the committed stubs: results, errors in
both error modes, auth, batch, metrics, and a publication reaching a WebSocket subscriber."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionRequest
from grpc_reflection.v1alpha.reflection_pb2_grpc import ServerReflectionStub
from harness import API_KEY, PyFactory, ServerFactory, ServerProcess, free_port, unique_channel

from node.api.proto import api_pb2 as pb
from node.api.proto.api_pb2_grpc import CentrifugoApiStub

GRPC_KEY = "fugato-test-grpc-key"
AUTH = (("authorization", f"apikey {GRPC_KEY}"),)
TRANSPORT = (*AUTH, ("x-centrifugo-error-mode", "transport"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp)
    config = {"grpc_api": {"enabled": True, "address": "127.0.0.1", "port": free_port(), "key": GRPC_KEY},
              "prometheus": {"enabled": True}}
    yield factory.start_sync(config)
    factory.close_sync()


@pytest.fixture
async def api(srv: ServerProcess) -> AsyncIterator[CentrifugoApiStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.config['grpc_api']['port']}") as channel:
        yield CentrifugoApiStub(channel)


async def test_publish_then_history(api: CentrifugoApiStub) -> None:
    ch = unique_channel("chat:")
    first = await api.Publish(pb.PublishRequest(channel=ch, data=b'{"n": 1}', tags={"k": "v"}), metadata=AUTH)
    second = await api.Publish(pb.PublishRequest(channel=ch, data=b'"two"'), metadata=AUTH)
    assert not first.HasField("error") and first.result.offset == 1 and len(first.result.epoch) == 8
    assert second.result.offset == 2 and second.result.epoch == first.result.epoch

    history = await api.History(pb.HistoryRequest(channel=ch, limit=-1), metadata=AUTH)
    assert not history.HasField("error")
    pubs = history.result.publications
    assert [json.loads(p.data) for p in pubs] == [{"n": 1}, "two"]
    assert [p.offset for p in pubs] == [1, 2] and dict(pubs[0].tags) == {"k": "v"}
    assert history.result.offset == 2 and history.result.epoch == first.result.epoch

    since = await api.History(pb.HistoryRequest(channel=ch, limit=10, since=pb.StreamPosition(
        offset=1, epoch=first.result.epoch)), metadata=AUTH)
    assert [p.offset for p in since.result.publications] == [2]

    removed = await api.HistoryRemove(pb.HistoryRemoveRequest(channel=ch), metadata=AUTH)
    assert removed.HasField("result") and not removed.HasField("error")
    after = await api.History(pb.HistoryRequest(channel=ch, limit=-1), metadata=AUTH)
    assert list(after.result.publications) == [] and after.result.offset == 2


async def test_publication_reaches_websocket_subscriber(
    srv: ServerProcess, api: CentrifugoApiStub, py_factory: PyFactory
) -> None:
    ch = unique_channel("chat:")
    client = await py_factory(srv, "alice")
    await client.subscribe(ch)

    presence = await api.Presence(pb.PresenceRequest(channel=ch), metadata=AUTH)
    assert [(i.user, i.client) for i in presence.result.presence.values()] == \
        [("alice", next(iter(presence.result.presence)))]
    stats = await api.PresenceStats(pb.PresenceStatsRequest(channel=ch), metadata=AUTH)
    assert (stats.result.num_clients, stats.result.num_users) == (1, 1)
    channels = await api.Channels(pb.ChannelsRequest(pattern="chat:*"), metadata=AUTH)
    assert channels.result.channels[ch].num_clients == 1

    await api.Publish(pb.PublishRequest(channel=ch, data=b'{"text":"over grpc"}'), metadata=AUTH)
    event = await client.wait("publication", ch)
    assert event.ctx.pub.data == {"text": "over grpc"} and event.ctx.pub.offset == 1


async def test_info(api: CentrifugoApiStub) -> None:
    info = await api.Info(pb.InfoRequest(), metadata=AUTH)
    assert len(info.result.nodes) == 1
    node = info.result.nodes[0]
    assert node.uid and node.name and node.version and node.uptime >= 0


@pytest.mark.parametrize("metadata", [(), (("authorization", "apikey wrong"),),
                                      (("authorization", f"bearer {GRPC_KEY}"),)])
async def test_bad_key_is_unauthenticated(api: CentrifugoApiStub, metadata: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await api.Info(pb.InfoRequest(), metadata=metadata)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_http_api_key_is_not_the_grpc_key(api: CentrifugoApiStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await api.Info(pb.InfoRequest(), metadata=(("authorization", f"apikey {API_KEY}"),))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_errors_in_the_response(api: CentrifugoApiStub) -> None:
    reply = await api.Publish(pb.PublishRequest(channel="nope:x", data=b"{}"), metadata=AUTH)
    assert not reply.HasField("result")
    assert (reply.error.code, reply.error.message) == (102, "unknown channel")
    assert (await api.Publish(pb.PublishRequest(channel="x"), metadata=AUTH)).error.code == 107  # no data
    assert (await api.History(pb.HistoryRequest(channel="plain"), metadata=AUTH)).error.code == 108
    assert (await api.RPC(pb.RPCRequest(method="m", params=b"{}"), metadata=AUTH)).error.code == 104


@pytest.mark.parametrize(("request_", "status"), [
    (pb.PublishRequest(channel="nope:x", data=b"{}"), grpc.StatusCode.NOT_FOUND),
    (pb.PublishRequest(channel="", data=b"{}"), grpc.StatusCode.INVALID_ARGUMENT),
])
async def test_transport_error_mode(api: CentrifugoApiStub, request_: pb.PublishRequest,
                                    status: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await api.Publish(request_, metadata=TRANSPORT)
    assert e.value.code() == status
    assert e.value.details() in ("unknown channel", "bad request")


async def test_batch_and_broadcast(api: CentrifugoApiStub) -> None:
    ch = unique_channel("chat:")
    batch = await api.Batch(pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel=ch, data=b"1")),
        pb.Command(publish=pb.PublishRequest(channel="nope:x", data=b"1")),
        pb.Command(presence_stats=pb.PresenceStatsRequest(channel=ch)),
        pb.Command(),
    ]), metadata=AUTH)
    replies = batch.replies
    assert len(replies) == 4
    assert replies[0].HasField("publish") and replies[0].publish.offset == 1
    assert replies[1].error.code == 102
    assert replies[2].HasField("presence_stats") and replies[2].presence_stats.num_clients == 0
    assert replies[3].error.code == 104  # a command without a method: Centrifugo's "not found"

    broadcast = await api.Broadcast(pb.BroadcastRequest(channels=[ch, "nope:y"], data=b'{"b":1}'), metadata=AUTH)
    first, second = broadcast.result.responses
    assert first.result.offset == 2 and second.error.code == 102


async def test_binary_data_is_stored_and_read_back_as_is(api: CentrifugoApiStub) -> None:
    ch = unique_channel("feed:")
    payloads = [b"\xff\x00not json", bytes(range(256)), b'{ "b" :1,  "a":[ 2 ] }']
    for payload in payloads:
        reply = await api.Publish(pb.PublishRequest(channel=ch, data=payload), metadata=AUTH)
        assert not reply.HasField("error")
    history = await api.History(pb.HistoryRequest(channel=ch, limit=-1), metadata=AUTH)
    assert [p.data for p in history.result.publications] == payloads


async def test_gzip_compressed_calls(srv: ServerProcess) -> None:
    port = srv.config["grpc_api"]["port"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", compression=grpc.Compression.Gzip) as channel:
        info = await CentrifugoApiStub(channel).Info(pb.InfoRequest(), metadata=AUTH)
    assert len(info.result.nodes) == 1


async def test_server_side_subscribe_and_disconnect(
    srv: ServerProcess, api: CentrifugoApiStub, py_factory: PyFactory
) -> None:
    ch = unique_channel("chat:")
    client = await py_factory(srv, "bob")
    reply = await api.Subscribe(pb.SubscribeRequest(user="bob", channel=ch, override=pb.SubscribeOptionOverride(
        presence=pb.BoolValue(value=False))), metadata=AUTH)
    assert reply.HasField("result") and not reply.HasField("error")
    await client.wait("server_subscribed", ch)
    stats = await api.Channels(pb.ChannelsRequest(pattern=ch), metadata=AUTH)
    assert stats.result.channels[ch].num_clients == 1
    bad = await api.Disconnect(pb.DisconnectRequest(user="bob", disconnect=pb.Disconnect(code=42)), metadata=AUTH)
    assert bad.error.code == 107  # codes below 3000 are refused


async def test_metrics_label_grpc_calls(srv: ServerProcess, api: CentrifugoApiStub) -> None:
    await api.PresenceStats(pb.PresenceStatsRequest(channel="nope:x"), metadata=AUTH)
    status, _, body = await srv.http("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'centrifugo_api_command_duration_seconds_count{method="presence_stats",protocol="grpc"}' in text or \
        'centrifugo_api_command_duration_seconds_count{protocol="grpc",method="presence_stats"}' in text
    assert 'protocol="grpc"' in text and 'code="102"' in text


async def test_disabled_by_default(server_factory: ServerFactory) -> None:
    port = free_port()
    server = await server_factory(env={"FUGATO_GRPC_API_PORT": str(port)})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await CentrifugoApiStub(channel).Info(pb.InfoRequest(), timeout=2)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.running


async def test_env_enables_without_key(server_factory: ServerFactory) -> None:
    port = free_port()
    await server_factory(env={"FUGATO_GRPC_API_ENABLED": "true", "FUGATO_GRPC_API_PORT": str(port),
                              "FUGATO_GRPC_API_ERROR_MODE": "transport", "FUGATO_GRPC_API_REFLECTION": "true"})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = CentrifugoApiStub(channel)
        assert len((await stub.Info(pb.InfoRequest())).result.nodes) == 1  # no key configured: no auth
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Presence(pb.PresenceRequest(channel="nope:x"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND  # error_mode from the environment
        reflection = ServerReflectionStub(channel)
        services = [r async for r in reflection.ServerReflectionInfo(iter([ServerReflectionRequest(list_services="")]))]
        names = {s.name for s in services[0].list_services_response.service}
        assert "centrifugal.centrifugo.api.CentrifugoApi" in names
