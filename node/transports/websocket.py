"""The bidirectional WebSocket transport at ``/connection/websocket`` (protocol v2, JSON text frames).

Outgoing frames bypass aiohttp's awaitable ``send_str``: the node writes pre-built, unmasked text frames
straight to the asyncio transport, so a fan-out never awaits. A broadcast builds each frame (header included)
once and every subscriber's queue holds the same bytes; a client's frames of one loop tick leave in a single
``write()``. Close frames, pongs and reading stay with aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import ClassVar, Final

from aiohttp import WSMsgType, web

from node.client import Client
from node.errors import DISCONNECT_CONNECTION_CLOSED, Disconnect
from node.models import RequestInfo
from node.node import Node
from node.protocol import proto
from node.transports.http import origin_allowed

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT: Final = 5.0  # how long a closing client may take to answer our close frame


TEXT: Final = 0x81  # FIN + text opcode
BINARY: Final = 0x82  # FIN + binary opcode
SUBPROTOCOLS: Final = ("centrifuge-json", "centrifuge-protobuf")


def frame_header(length: int, first: int = TEXT) -> bytes:
    """Header of a final, unmasked frame (RFC 6455 §5.2)."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


class WebSocketTransport:
    __slots__ = ("_raw", "_ws")

    name: ClassVar[str] = "websocket"
    protocol: ClassVar[str] = "json"
    framing: ClassVar[str] = "ws-text"
    unidirectional: ClassVar[bool] = False
    session: ClassVar[str] = ""

    def __init__(self, ws: web.WebSocketResponse, raw: asyncio.Transport) -> None:
        self._ws = ws
        self._raw = raw

    @staticmethod
    def frame(message: bytes) -> bytes:
        return frame_header(len(message)) + message

    def write(self, data: bytes) -> None:
        self._raw.write(data)

    def buffered(self) -> int:
        return self._raw.get_write_buffer_size()

    @property
    def closed(self) -> bool:
        return self._raw.is_closing() or self._ws.closed

    async def close(self, disconnect: Disconnect) -> None:
        if self._ws.closed:
            return
        if disconnect.code == DISCONNECT_CONNECTION_CLOSED.code:
            await self._ws.close()
            return
        self.before_close(disconnect)
        try:
            await asyncio.wait_for(
                self._ws.close(code=disconnect.code, message=disconnect.reason.encode()), CLOSE_TIMEOUT)
        except TimeoutError:
            self._raw.abort()

    def before_close(self, disconnect: Disconnect) -> None:
        """What a closing connection is sent before the close frame (nothing here; see uni_websocket)."""


class ProtobufWebSocketTransport(WebSocketTransport):
    """The same connection speaking protobuf: each message is a varint-delimited ``Reply`` in a binary frame."""

    __slots__ = ()

    protocol: ClassVar[str] = "protobuf"
    framing: ClassVar[str] = "ws-protobuf"

    @staticmethod
    def frame(message: bytes) -> bytes:
        body = proto.delimit(message)
        return frame_header(len(body), BINARY) + body


def wants_protobuf(request: web.Request, subprotocol: str | None) -> bool:
    """Centrifugo's negotiation: the ``centrifuge-protobuf`` subprotocol (what centrifuge-js sends) or
    ``?cf_protocol=protobuf`` (legacy ``?format=protobuf``)."""
    if subprotocol == "centrifuge-protobuf":
        return True
    return "protobuf" in (request.query.get("cf_protocol"), request.query.get("format"))


async def websocket_handler(request: web.Request, node: Node) -> web.StreamResponse:
    cfg = node.config
    if node.shutting_down:
        return web.Response(status=503)
    if not origin_allowed(request.headers.get("Origin"), cfg.client.allowed_origins):
        return web.Response(status=403, text="Invalid origin")
    if cfg.client.connection_limit and node.hub.num_clients() >= cfg.client.connection_limit:
        return web.Response(status=503)
    ws = web.WebSocketResponse(max_msg_size=cfg.websocket.message_size_limit, compress=False, autoping=True,
                               timeout=CLOSE_TIMEOUT, protocols=SUBPROTOCOLS)
    await ws.prepare(request)
    raw = request.transport
    if raw is None:
        return ws
    protobuf = wants_protobuf(request, ws.ws_protocol)
    transport = (ProtobufWebSocketTransport if protobuf else WebSocketTransport)(ws, raw)
    # Headers are not kept (a copy per connection costs memory), except those a proxy forwards.
    client = Client(node, transport, RequestInfo(transport="websocket", remote=request.remote or "",
                                                 headers=request.headers))
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                if not await client.handle_data(msg.data):
                    break
            elif msg.type is WSMsgType.ERROR:
                break
    finally:
        await client.close(DISCONNECT_CONNECTION_CLOSED)
        # A close started elsewhere (the fan-out's 3506, a slow client's 3008) may still be leaving channels
        # before it sends its close frame: returning now would let aiohttp close with 1000 instead.
        await client.wait_closed()
    return ws
