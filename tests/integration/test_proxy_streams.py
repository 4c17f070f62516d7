"""The subscribe_stream proxy (Centrifugo v6, GRPC only) driven by centrifuge-js against a real grpc.aio backend
started by the test: the backend's stream messages arrive as publications, a bidirectional stream gets what the
client publishes, unsubscribe and disconnect close the stream, the backend's refusals and failures reach the
SDK with Centrifugo's codes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from harness import JsFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsCallError
from proxy_backends import BackendStream, GrpcBackend

from node.config_load import load
from node.errors import ConfigError
from node.metrics import Metrics
from node.proxy.manager import Proxies


def b64json(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def unb64json(value: str) -> Any:
    return json.loads(base64.b64decode(value))


def stream_config(grpc: GrpcBackend, **extra: Any) -> dict[str, Any]:
    """Namespace ``st`` streams through the named proxy, ``bi`` through the default one, bidirectionally."""
    return {
        "prometheus": {"enabled": True},
        "proxies": [{"name": "streams", "endpoint": grpc.endpoint, "timeout": "1s",
                     "grpc_metadata": ["x-test-auth"], "include_connection_meta": True}],
        "channel": {
            "proxy": {"subscribe_stream": {"endpoint": grpc.endpoint, "timeout": "1s"}},
            "namespaces": [
                {"name": "st", "subscribe_stream_proxy_enabled": True, "subscribe_stream_proxy_name": "streams",
                 "presence": True, **extra},
                {"name": "bi", "subscribe_stream_proxy_enabled": True, "subscribe_stream_proxy_bidirectional": True},
            ],
        },
    }


async def opened(grpc: GrpcBackend, channel: str) -> BackendStream:
    await wait_until(lambda: any(s.channel == channel for s in grpc.streams), timeout=10)
    return next(s for s in grpc.streams if s.channel == channel)


async def connected_js(js_factory: JsFactory, srv: ServerProcess, user: str = "alice") -> Any:
    js = await js_factory(srv)
    await js.call("connect", token=srv.token(user, meta={"plan": "pro"}), wait=True)
    return js


@pytest.fixture
async def env(server_factory: ServerFactory, js_factory: JsFactory,
              ) -> AsyncIterator[tuple[GrpcBackend, ServerProcess, Any]]:
    """A GRPC backend, a server streaming through it and a centrifuge-js client connected to that."""
    async with GrpcBackend() as grpc:
        srv = await server_factory(stream_config(grpc))
        yield grpc, srv, await connected_js(js_factory, srv)


async def test_unidirectional_stream_publications_reach_the_sdk(server_factory: ServerFactory,
                                                                js_factory: JsFactory) -> None:
    async with GrpcBackend() as grpc:
        # A bytes field in proto's JSON mapping is base64: this answer's data is the JSON {"hello": <channel>}.
        grpc.answers["subscribe_stream"] = lambda body: {"result": {"data": b64json({"hello": body["channel"]})}}
        srv = await server_factory(stream_config(grpc))
        js = await connected_js(js_factory, srv)
        ch = unique_channel("st:")
        await js.call("subscribe", channel=ch, data={"want": "prices"}, wait=True)
        subscribed = await js.wait("subscribed", channel=ch)
        assert subscribed["data"] == {"hello": ch}
        assert not subscribed.get("positioned") and not subscribed.get("recoverable")
        call = grpc.of("subscribe_stream")[0]
        assert call.body["channel"] == ch and call.body["user"] == "alice"
        assert unb64json(call.body["meta"]) == {"plan": "pro"}  # include_connection_meta of the named proxy
        assert unb64json(call.body["data"]) == {"want": "prices"}
        stream = await opened(grpc, ch)
        assert not stream.bidirectional
        for i in range(3):
            stream.send(b'{"tick":%d}' % i)
        for i in range(3):
            pub = await js.wait("publication", channel=ch)
            assert pub["data"] == {"tick": i} and pub["tags"] == {"via": "stream"}
        # Presence of the namespace works for stream subscriptions as for any other.
        presence = await srv.api("presence", {"channel": ch})
        assert len(presence["result"]["presence"]) == 1
        # Publishing into a unidirectional stream namespace is not available (as Centrifugo).
        with pytest.raises(JsCallError) as refused:
            await js.call("publish", channel=ch, data={"x": 1})
        assert refused.value.code == 108
        # The client unsubscribes: the stream is cancelled.
        await js.call("unsubscribe", channel=ch)
        await asyncio.wait_for(stream.closed.wait(), 10)


async def test_bidirectional_stream_takes_client_publications(env: tuple[GrpcBackend, ServerProcess, Any]) -> None:
    grpc, _, js = env
    ch = unique_channel("bi:")
    await js.call("subscribe", channel=ch, wait=True)
    stream = await opened(grpc, ch)
    assert stream.bidirectional
    await js.call("publish", channel=ch, data={"from": "client"})
    await wait_until(lambda: stream.received == [b'{"from":"client"}'], timeout=10)
    stream.send(b'{"echo":true}')
    assert (await js.wait("publication", channel=ch))["data"] == {"echo": True}
    # The connection goes away: the stream is cancelled.
    await js.call("disconnect")
    await asyncio.wait_for(stream.closed.wait(), 10)


async def test_backend_ending_or_breaking_the_stream_unsubscribes(env: tuple[GrpcBackend, ServerProcess, Any]) -> None:
    grpc, _, js = env
    ended, broken = unique_channel("st:"), unique_channel("st:")
    await js.call("subscribe", channel=ended, wait=True)
    await js.call("subscribe", channel=broken, wait=True)
    (await opened(grpc, ended)).outgoing.put_nowait("end")
    unsub = await js.wait("unsubscribed", channel=ended)
    assert unsub["code"] == 2000  # server unsubscribe: final
    first = await opened(grpc, broken)
    first.outgoing.put_nowait("break")
    # 2500 insufficient state: the SDK resubscribes, which opens a new stream.
    await wait_until(lambda: len([s for s in grpc.streams if s.channel == broken]) == 2, timeout=15)
    await js.wait("subscribed", channel=broken)


async def test_stream_refusals_and_faults_reach_the_sdk(env: tuple[GrpcBackend, ServerProcess, Any]) -> None:
    grpc, srv, js = env
    refused = unique_channel("st:")
    grpc.answers["subscribe_stream"] = lambda body: {"error": {"code": 4403, "message": "no stream for you"}}
    await js.call("subscribe", channel=refused)
    # A final error: centrifuge-js gives up the subscription with that code.
    unsub = await js.wait("unsubscribed", channel=refused)
    assert (unsub["code"], unsub["reason"]) == (4403, "no stream for you")
    grpc.answers.pop("subscribe_stream")
    for fault in ("5xx", "slow"):
        grpc.faults["subscribe_stream"] = fault
        ch = unique_channel("st:")
        await js.call("subscribe", channel=ch)
        err = await js.wait("sub_error", channel=ch, timeout=15)
        assert err["error"]["code"] == 100  # internal, temporary: the SDK retries
        await js.call("unsubscribe", channel=ch)
    async with aiohttp.ClientSession() as http, http.get(srv.http_url + "/metrics") as resp:
        metrics = [line for line in (await resp.text()).splitlines()
                   if line.startswith("centrifugo_proxy_call_outcomes_total{") and "subscribe_stream" in line]
    assert any('outcome="timeout"' in line for line in metrics), metrics
    assert any('outcome="bad_status"' in line for line in metrics), metrics
    grpc.faults.pop("subscribe_stream")
    # A disconnect answer closes the connection with that code.
    grpc.answers["subscribe_stream"] = lambda body: {"disconnect": {"code": 4501, "reason": "go away"}}
    await js.call("subscribe", channel=unique_channel("st:"))
    assert (await js.wait("disconnected"))["code"] == 4501


def test_a_stream_proxy_must_be_grpc(tmp_path: Any) -> None:
    cfg = load(None, {}, {"channel.proxy.subscribe_stream.endpoint": "http://localhost:3000/stream",
                          "channel.without_namespace.subscribe_stream_proxy_enabled": True}).config
    with pytest.raises(ConfigError, match="only GRPC"):
        Proxies(cfg, Metrics("test").registry)
