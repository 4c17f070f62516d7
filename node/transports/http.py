"""Pieces shared by the HTTP transports (HTTP-stream, SSE, their unidirectional versions, ``/emulation``) and
by the unidirectional WebSocket: Origin checks and CORS headers, bounded body reads, response headers, and the
checks every connection endpoint makes before it accepts a connection."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Final

from aiohttp import web

from node.node import Node

# Streams must reach the client as written: no caching, and no buffering in a proxy (nginx honours the last).
NO_CACHE_HEADERS: Final[Mapping[str, str]] = {
    "Cache-Control": "private, no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expire": "0",
    "X-Accel-Buffering": "no",
}

def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """Centrifugo's rule: no Origin header is fine; otherwise it must match a pattern (empty list = none)."""
    if origin is None:
        return True
    origin = origin.lower()
    return any(p == "*" or fnmatch.fnmatchcase(origin, p.lower()) for p in allowed)


def origin_ok(request: web.BaseRequest, allowed: Sequence[str]) -> bool:
    return origin_allowed(request.headers.get("Origin"), allowed)


def cors_headers(request: web.BaseRequest) -> dict[str, str]:
    """CORS headers for a request whose Origin passed ``origin_ok`` (none without an Origin header)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested:
        headers["Access-Control-Allow-Headers"] = requested
    return headers


def preflight(request: web.BaseRequest, allowed: Sequence[str]) -> web.Response:
    """Answer an OPTIONS preflight: 200 with CORS headers when the Origin is allowed, else 403."""
    if not origin_ok(request, allowed):
        return web.Response(status=403, text="Invalid origin")
    headers = cors_headers(request)
    headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    return web.Response(status=200, headers=headers)


async def read_body(request: web.BaseRequest, limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit`` bytes (the caller answers 413). Reads at most
    ``limit + 1`` bytes, so an oversized body is never buffered whole."""
    if request.content_length is not None and request.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(parts)


def protobuf_body(request: web.BaseRequest) -> bool:
    """Centrifugo's negotiation for HTTP-streaming and ``/emulation``: an ``application/octet-stream`` body is
    protobuf (what centrifuge-js's protobuf build sends), any other is JSON."""
    return request.content_type == "application/octet-stream"


def refuse(request: web.BaseRequest, node: Node) -> web.Response | None:
    """The checks every connection endpoint makes before it accepts a connection (None: accepted)."""
    cfg = node.config.client
    if node.shutting_down:
        return web.Response(status=503)
    if not origin_ok(request, cfg.allowed_origins):
        return web.Response(status=403, text="Invalid origin")
    if cfg.connection_limit and node.hub.num_clients() >= cfg.connection_limit:
        return web.Response(status=503, headers=cors_headers(request))
    return None
