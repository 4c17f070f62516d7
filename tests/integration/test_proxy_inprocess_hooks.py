"""In-process handlers for the hooks beyond the basic six: map publish/remove, shared poll refresh and
subscribe streams (an async generator), plus the refresh and sub_refresh fault rule (a failing handler gives the
connection or subscription a short extension and is asked again, as Centrifugo does on a proxy error). The node
runs in the test's event loop inside an aiohttp app, driven by centrifuge-python and centrifuge-js."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from harness import PyClient, free_port, unique_channel, wait_until
from jsclient import JsCallError, JsClient

from node.config_load import load
from node.errors import Error, ReplyError
from node.metrics import Metrics
from node.proxy import hooks, shared_poll
from node.proxy.manager import Proxies
from node.proxy.map_writes import MapWriteRequest, MapWriteResult
from node.proxy.python import Handlers
from node.proxy.python_stream import Incoming, StreamPublication
from node.proxy.shared_poll import SharedPollRefreshRequest
from node.proxy.types import (
    ConnectRequest,
    ConnectResult,
    RefreshRequest,
    RefreshResult,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribeRequest,
    SubscribeResult,
)
from node.server import build_app
from node.sharedpoll.refresh import Answer, Item

Serve = Callable[[dict[str, Any], Handlers], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an aiohttp app embedding a node with ``handlers``; gives its WebSocket URL."""
    runners: list[web.AppRunner] = []

    async def start(overrides: dict[str, Any], handlers: Handlers) -> str:
        port = free_port()
        config = load(None, {}, {"http_server.port": port, **overrides}).config
        runner = web.AppRunner(build_app(config, handlers=handlers), shutdown_timeout=1.0)
        runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return f"ws://127.0.0.1:{port}/connection/websocket"

    yield start
    for runner in runners:
        await runner.cleanup()


def _user(name: str) -> Callable[[ConnectRequest], Awaitable[ConnectResult]]:
    async def connect(req: ConnectRequest) -> ConnectResult:
        return ConnectResult(user=name)
    return connect


async def test_map_writes_are_decided_by_in_process_handlers(serve: Serve) -> None:
    handlers = Handlers()
    handlers.on_connect(_user("alice"))
    seen: list[MapWriteRequest] = []

    async def map_publish(req: MapWriteRequest) -> MapWriteResult:
        seen.append(req)
        if req.key == "deny":
            raise ReplyError(Error(4000, "not your slot"))
        return MapWriteResult(key=f"u-{req.user}", data=orjson.dumps({"slot": req.key}), tags={"src": "py"})

    async def map_remove(req: MapWriteRequest) -> MapWriteResult:
        seen.append(req)
        return MapWriteResult(tags={"src": "py-remove"})

    handlers.on_map_publish(map_publish)
    handlers.on_map_remove(map_remove)
    url = await serve({"channel.namespaces": [
        {"name": "game", "subscription_type": "map", "allow_subscribe_for_client": True,
         "map": {"mode": "persistent", "publish_proxy_enabled": True,
                 "remove_proxy_enabled": True}}]}, handlers)
    ch = unique_channel("game:")
    js = await JsClient(url, name="mapw").start()
    try:
        await js.call("connect", wait=True)
        await js.call("map_subscribe", channel=ch, wait=True)
        await js.call("map_publish", channel=ch, key="slot1", data={"x": 1}, via="client")
        update = await js.wait("map_update", channel=ch, key="u-alice")
        assert update["data"] == {"slot": "slot1"} and update["tags"] == {"src": "py"}
        assert (seen[0].channel, seen[0].key, orjson.loads(seen[0].data or b"")) == (ch, "slot1", {"x": 1})
        with pytest.raises(JsCallError) as refused:
            await js.call("map_publish", channel=ch, key="deny", data={}, via="client")
        assert refused.value.code == 4000
        await js.call("map_remove", channel=ch, key="u-alice", via="client")
        removal = await js.wait("map_update", channel=ch, key="u-alice", removed=True)
        assert removal["tags"] == {"src": "py-remove"}
        assert seen[-1].key == "u-alice" and seen[-1].data is None
    finally:
        await js.close()


async def test_shared_poll_refresh_goes_to_an_in_process_handler() -> None:
    handlers = Handlers()
    asked: list[SharedPollRefreshRequest] = []

    async def refresh(req: SharedPollRefreshRequest) -> Answer:
        asked.append(req)
        return Answer([Item(key, b'{"v":%d}' % (version + 1), version + 1) for key, version in req.items], "e1")

    handlers.on_shared_poll_refresh(refresh)
    cfg = load(None, {}, {"channel.namespaces": [
        {"name": "poll", "subscription_type": "shared_poll", "shared_poll": {"mode": "versioned"}}],
        "shared_poll.hmac_secret_key": "s"}).config
    proxies = Proxies(cfg, Metrics("test").registry, handlers)
    proxy = proxies.for_shared_poll(cfg.channel.namespaces[0])
    assert proxy is not None and proxy.backend.kind == "python"
    answer = await shared_poll.refresh(proxy, "poll:a", [("k1", 3)], versioned=True)
    assert answer == Answer([Item("k1", b'{"v":4}', 4)], "e1")
    assert asked == [SharedPollRefreshRequest("poll:a", [("k1", 3)], True)]


def _stream_handlers() -> tuple[Handlers, list[bytes], asyncio.Event]:
    handlers = Handlers()
    handlers.on_connect(_user("bob"))
    received: list[bytes] = []
    closed = asyncio.Event()

    async def stream(req: SubscribeRequest, incoming: Incoming) -> AsyncIterator[Any]:
        if req.channel.endswith("nope"):
            raise ReplyError(Error(4403, "no stream for you"))
        try:
            yield SubscribeResult(data=orjson.dumps({"hello": req.channel}))
            if req.channel.startswith("st:"):
                for i in range(3):
                    yield StreamPublication(b'{"tick":%d}' % i, {"via": "py"})
                if req.channel.endswith("end"):
                    return
                await asyncio.Event().wait()  # stays open until the subscription ends
            async for data in incoming:  # bidirectional: echo every client publish
                received.append(data)
                yield b'{"echo":%s}' % data
        finally:
            closed.set()

    handlers.on_subscribe_stream(stream)
    return handlers, received, closed


async def test_subscribe_stream_in_process(serve: Serve) -> None:
    handlers, received, closed = _stream_handlers()
    url = await serve({"channel.namespaces": [
        {"name": "st", "subscribe_stream_proxy_enabled": True},
        {"name": "bi", "subscribe_stream_proxy_enabled": True, "subscribe_stream_proxy_bidirectional": True}]},
        handlers)
    py = PyClient(url)
    try:
        await py.connect()
        uni = unique_channel("st:")
        sub = await py.subscribe(uni)
        assert py.events("subscribed", uni)[0].ctx.data == {"hello": uni}
        for i in range(3):
            await wait_until(lambda i=i: len(py.events("publication", uni)) > i, timeout=10)
        assert [e.ctx.pub.data for e in py.events("publication", uni)] == [{"tick": i} for i in range(3)]
        assert py.events("publication", uni)[0].ctx.pub.tags == {"via": "py"}
        await sub.unsubscribe()
        await asyncio.wait_for(closed.wait(), 10)  # the unsubscribe closed the generator

        bi = unique_channel("bi:")
        bsub = await py.subscribe(bi)
        await bsub.publish({"n": 1})
        pub = await py.wait("publication", bi)
        assert pub.ctx.pub.data == {"echo": {"n": 1}} and [orjson.loads(d) for d in received] == [{"n": 1}]

        ended = unique_channel("st:") + "end"  # the generator returns: unsubscribed with 2000
        await py.subscribe(ended, wait=False)
        assert (await py.wait("unsubscribed", ended)).ctx.code == 2000
        refused = unique_channel("st:") + "nope"
        await py.subscribe(refused, wait=False)
        assert (await py.wait("unsubscribed", refused)).ctx.code == 4403
    finally:
        await py.close()


async def test_refresh_faults_extend_and_retry(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    # Centrifugo extends by 60 s after a failed refresh; shortened here so the retry comes within the test.
    monkeypatch.setattr(hooks, "RETRY_REFRESH_AFTER", 1)
    handlers = Handlers()
    refreshes: list[RefreshRequest] = []
    sub_refreshes: list[SubRefreshRequest] = []

    async def connect(req: ConnectRequest) -> ConnectResult:
        return ConnectResult(user="carol", expire_at=int(time.time()) + 1)

    async def refresh(req: RefreshRequest) -> RefreshResult:
        refreshes.append(req)
        if len(refreshes) == 1:
            raise RuntimeError("backend blip")
        return RefreshResult(expire_at=int(time.time()) + 3600)

    async def subscribe(req: SubscribeRequest) -> SubscribeResult:
        return SubscribeResult(expire_at=int(time.time()) + 1)

    async def sub_refresh(req: SubRefreshRequest) -> SubRefreshResult:
        sub_refreshes.append(req)
        if len(sub_refreshes) == 1:
            raise RuntimeError("backend blip")
        return SubRefreshResult(expire_at=int(time.time()) + 3600)

    handlers.on_connect(connect)
    handlers.on_refresh(refresh)
    handlers.on_subscribe(subscribe)
    handlers.on_sub_refresh(sub_refresh)
    url = await serve({"client.presence_update_interval": "200ms", "channel.namespaces": [
        {"name": "exp", "subscribe_proxy_enabled": True, "sub_refresh_proxy_enabled": True,
         "allow_publish_for_subscriber": True}]}, handlers)
    py = PyClient(url)
    try:
        await py.connect()
        ch = unique_channel("exp:")
        await py.subscribe(ch)
        # The first call of each failed: the connection and the subscription live on and are asked again.
        await wait_until(lambda: len(refreshes) >= 2 and len(sub_refreshes) >= 2, timeout=15)
        assert not py.events("disconnected") and not py.events("unsubscribed", ch)
        assert sub_refreshes[1].channel == ch and refreshes[1].user == "carol"
        # Still usable after both retries.
        await py.client.get_subscription(ch).publish({"ok": True})
        assert (await py.wait("publication", ch)).ctx.pub.data == {"ok": True}
    finally:
        await py.close()
