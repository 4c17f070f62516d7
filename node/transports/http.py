"""Pieces shared by the HTTP transports (HTTP-stream, SSE, their unidirectional versions, ``/emulation``) and
by the unidirectional WebSocket: Origin checks and CORS headers, bounded body reads, response headers, and the
unidirectional connect (a connect request in, a ``connect`` push or a ``disconnect`` push out)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from node import commands
from node.config import ClientConfig
from node.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_EXPIRED,
    DISCONNECT_PERMISSION_DENIED,
    DISCONNECT_SERVER_ERROR,
    DISCONNECT_TOO_MANY_REQUESTS,
    Disconnect,
    DisconnectError,
    ReplyError,
)
from node.protocol import codec
from node.transports.websocket import origin_allowed

if TYPE_CHECKING:
    from node.client import Client
    from node.node import Node

logger = logging.getLogger(__name__)

# Streams must reach the client as written: no caching, and no buffering in a proxy (nginx honours the last).
NO_CACHE_HEADERS: Final[Mapping[str, str]] = {
    "Cache-Control": "private, no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expire": "0",
    "X-Accel-Buffering": "no",
}

# Centrifugo's default mapping of connect error codes to the disconnect a unidirectional client gets (it has no
# reply to carry an error): expired -> reconnect with a fresh token; rate limited -> reconnect later; permission
# denied -> terminal; anything else -> reconnect.
_UNI_CONNECT_ERRORS: Final[Mapping[int, Disconnect]] = {
    109: DISCONNECT_EXPIRED,
    110: DISCONNECT_EXPIRED,
    111: DISCONNECT_TOO_MANY_REQUESTS,
    103: DISCONNECT_PERMISSION_DENIED,
}


def uni_connect_disconnect(cfg: ClientConfig, code: int) -> Disconnect:
    """The disconnect a unidirectional client gets for connect error ``code``: a configured transform
    (``client.connect_code_to_unidirectional_disconnect``) or Centrifugo's default mapping."""
    transforms = cfg.connect_code_to_unidirectional_disconnect
    if transforms.enabled:
        for t in transforms.transforms:
            if t.code == code:
                return Disconnect(t.to.code, t.to.reason)
    return _UNI_CONNECT_ERRORS.get(code, DISCONNECT_SERVER_ERROR)


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


def parse_connect_request(data: bytes | str) -> dict[str, Any] | None:
    """A unidirectional ConnectRequest (``token``, ``data``, ``subs``, ``name``, ``version``); None if malformed.
    An empty body is an empty request (e.g. anonymous access)."""
    if not data:
        return {}
    try:
        req = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return req if isinstance(req, dict) else None


async def connect_unidirectional(client: Client, request: dict[str, Any] | None) -> bool:
    """Run the connect of a unidirectional client: on success the ``connect`` push is queued (server-side
    subscriptions from the token included); on failure the client is closed with a disconnect push. True when
    connected."""
    return await connect_unidirectional_code(client, request) == 0


async def connect_unidirectional_code(client: Client, request: dict[str, Any] | None) -> int:
    """``connect_unidirectional``, telling why a connect failed: 0 when connected, else the connect's error or
    disconnect code (before any mapping), which ``connect_code_to_http_response`` transforms match on."""
    if request is None:
        await client.close(DISCONNECT_BAD_REQUEST)
        return DISCONNECT_BAD_REQUEST.code
    try:
        await commands.connect(client, codec.Command(0, "connect", request))
    except ReplyError as e:
        client.node.metrics.reply_error("connect", e.error.code)
        await client.close(uni_connect_disconnect(client.node.config.client, e.error.code))
        return e.error.code
    except DisconnectError as e:
        await client.close(e.disconnect)
        return e.disconnect.code
    except Exception:
        logger.exception("client %s: unidirectional connect failed", client.id)
        await client.close(DISCONNECT_SERVER_ERROR)
        return DISCONNECT_SERVER_ERROR.code
    return 0


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
