"""Fugato inside an aiohttp application, with in-process proxy handlers instead of a backend endpoint.

Run ``python examples/embedded.py`` and connect a client to ws://127.0.0.1:8000/connection/websocket with an
``Authorization: Bearer <user>`` header (centrifuge-python: ``Client(url, headers={...})``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from node.config_load import load
from node.errors import ERROR_METHOD_NOT_FOUND, Disconnect, DisconnectError, Error, ReplyError
from node.proxy.python import Handlers
from node.proxy.python_stream import Incoming
from node.proxy.types import (
    ConnectRequest,
    ConnectResult,
    PublishRequest,
    PublishResult,
    RPCRequest,
    RPCResult,
    SubscribeRequest,
    SubscribeResult,
)
from node.server import build_app

handlers = Handlers(http_headers=("Authorization",))


@handlers.on_connect
async def connect(req: ConnectRequest) -> ConnectResult:
    token = req.headers.get("authorization", "")
    if not token.startswith("Bearer "):
        raise DisconnectError(Disconnect(4501, "unauthorized"))
    user = token.removeprefix("Bearer ")
    return ConnectResult(user=user, data=orjson.dumps({"welcome": user}), meta=b'{"plan":"free"}')


@handlers.on_subscribe
async def subscribe(req: SubscribeRequest) -> SubscribeResult:
    if req.channel in (f"chat:{req.user}", "chat:lobby"):
        return SubscribeResult(info=orjson.dumps({"nick": req.user.title()}))
    raise ReplyError(Error(403, "not your room"))


@handlers.on_publish
async def publish(req: PublishRequest) -> PublishResult:
    message = orjson.loads(req.data)
    return PublishResult(data=orjson.dumps({"text": str(message.get("text", ""))[:200], "from": req.user}))


@handlers.on_rpc
async def rpc(req: RPCRequest) -> RPCResult:
    if req.method == "whoami":
        return RPCResult(data=orjson.dumps({"user": req.user, "meta": orjson.loads(req.meta or b"null")}))
    raise ReplyError(ERROR_METHOD_NOT_FOUND)


@handlers.on_subscribe_stream
async def ticks(req: SubscribeRequest, incoming: Incoming) -> AsyncIterator[SubscribeResult | bytes]:
    yield SubscribeResult(data=orjson.dumps({"every": "1s"}))  # the subscribe answer
    for n in itertools.count():  # then publications for this subscriber only, until it unsubscribes
        yield orjson.dumps({"tick": n, "user": req.user})
        await asyncio.sleep(1)


def make_app(port: int = 8000) -> web.Application:
    config = load(None, {}, {
        "http_server.port": port,
        "channel.namespaces": [{"name": "chat", "subscribe_proxy_enabled": True, "publish_proxy_enabled": True},
                               {"name": "ticks", "subscribe_stream_proxy_enabled": True}],
        "rpc.without_namespace.proxy_enabled": True,
    }).config
    return build_app(config, handlers=handlers)


if __name__ == "__main__":
    web.run_app(make_app(), port=8000)
