"""Routes of the transports other than the bidirectional WebSocket, each behind its Centrifugo switch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from node.node import Node
from node.transports.emulation import Emulation
from node.transports.streaming import http_stream_handler, sse_handler, uni_http_stream_handler, uni_sse_handler
from node.transports.uni_websocket import uni_websocket_handler

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_transport_routes(app: web.Application, node: Node) -> None:
    """HTTP-stream and SSE (with ``/emulation`` while either is on) and the unidirectional transports; all are
    off by default, as in Centrifugo. Browser-facing POST endpoints also answer CORS preflights."""
    config = node.config

    def add(methods: tuple[str, ...], path: str, route: Route) -> None:
        for method in methods:
            app.router.add_route(method, path, route)

    if config.http_stream.enabled or config.sse.enabled:
        # The sessions of this node's emulated connections: owned by these routes, shared by their handlers.
        emulation = Emulation(node)

        async def http_stream(request: web.Request) -> web.StreamResponse:
            return await http_stream_handler(request, node, emulation)

        async def sse(request: web.Request) -> web.StreamResponse:
            return await sse_handler(request, node, emulation)

        if config.http_stream.enabled:
            add(("POST", "OPTIONS"), config.http_stream.handler_prefix, http_stream)
        if config.sse.enabled:
            add(("GET", "POST", "OPTIONS"), config.sse.handler_prefix, sse)
        add(("POST", "OPTIONS"), config.emulation.handler_prefix, emulation.handle)

    async def uni_websocket(request: web.Request) -> web.StreamResponse:
        return await uni_websocket_handler(request, node)

    async def uni_sse(request: web.Request) -> web.StreamResponse:
        return await uni_sse_handler(request, node)

    async def uni_http_stream(request: web.Request) -> web.StreamResponse:
        return await uni_http_stream_handler(request, node)

    if config.uni_websocket.enabled:
        app.router.add_get(config.uni_websocket.handler_prefix, uni_websocket)
    if config.uni_sse.enabled:
        add(("GET", "POST", "OPTIONS"), config.uni_sse.handler_prefix, uni_sse)
    if config.uni_http_stream.enabled:
        add(("POST", "OPTIONS"), config.uni_http_stream.handler_prefix, uni_http_stream)
