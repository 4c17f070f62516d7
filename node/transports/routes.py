"""Routes of the transports other than the bidirectional WebSocket, each behind its Centrifugo switch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from node.emulation import Emulation
from node.node import Node
from node.transports.streaming import http_stream_handler, sse_handler, uni_http_stream_handler, uni_sse_handler
from node.transports.uni_websocket import uni_websocket_handler

Handler = Callable[[web.Request, Node], Awaitable[web.StreamResponse]]


def _bind(handler: Handler, node: Node) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, node)

    return bound


def add_transport_routes(app: web.Application, node: Node) -> None:
    """HTTP-stream and SSE (with ``/emulation`` while either is on) and the unidirectional transports; all are
    off by default, as in Centrifugo. Browser-facing POST endpoints also answer CORS preflights."""
    config = node.config
    if config.http_stream.enabled:
        app.router.add_route("POST", config.http_stream.handler_prefix, _bind(http_stream_handler, node))
        app.router.add_route("OPTIONS", config.http_stream.handler_prefix, _bind(http_stream_handler, node))
    if config.sse.enabled:
        for method in ("GET", "POST", "OPTIONS"):
            app.router.add_route(method, config.sse.handler_prefix, _bind(sse_handler, node))
    if config.http_stream.enabled or config.sse.enabled:
        emulation = node.emulation = Emulation(node)
        app.router.add_route("POST", config.emulation.handler_prefix, emulation.handle)
        app.router.add_route("OPTIONS", config.emulation.handler_prefix, emulation.handle)
    if config.uni_websocket.enabled:
        app.router.add_get(config.uni_websocket.handler_prefix, _bind(uni_websocket_handler, node))
    if config.uni_sse.enabled:
        for method in ("GET", "POST", "OPTIONS"):
            app.router.add_route(method, config.uni_sse.handler_prefix, _bind(uni_sse_handler, node))
    if config.uni_http_stream.enabled:
        for method in ("POST", "OPTIONS"):
            app.router.add_route(method, config.uni_http_stream.handler_prefix, _bind(uni_http_stream_handler, node))
