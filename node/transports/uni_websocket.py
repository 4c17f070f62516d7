"""The unidirectional WebSocket at ``/connection/uni_websocket``: the first message is a ConnectRequest, then
the server sends bare pushes (``connect`` first) and ``{}`` pings, one text frame each. Later messages from the
client are ignored; closing ends the connection.

Frames are written as in the bidirectional transport (pre-built, straight to the asyncio transport), so this
transport shares its ``ws-text`` framing; the hub keeps unidirectional frames apart by its cache key.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from aiohttp import WSMsgType, web

from node.client import Client
from node.errors import DISCONNECT_BAD_REQUEST, DISCONNECT_CONNECTION_CLOSED, Disconnect
from node.models import RequestInfo
from node.node import Node
from node.transports.http import refuse
from node.transports.uni import connect_unidirectional, disconnect_message, parse_connect_request
from node.transports.websocket import CLOSE_TIMEOUT, WebSocketTransport, frame_header

logger = logging.getLogger(__name__)


class UniWebSocketTransport(WebSocketTransport):
    """The bidirectional transport's frames and writes; closing also sends a disconnect push."""

    __slots__ = ()

    name: ClassVar[str] = "uni_websocket"
    unidirectional: ClassVar[bool] = True

    def before_close(self, disconnect: Disconnect) -> None:
        """A disconnect push first: a unidirectional client may not see close frames (e.g. behind a proxy)."""
        if not self._raw.is_closing():
            self.write(self.frame(disconnect_message(self.protocol, disconnect, True)))


class JoinedUniWebSocketTransport(UniWebSocketTransport):
    """``uni_websocket.join_push_messages``: the messages of one flush share a single text frame, one JSON per
    line (the client must split on newlines), instead of a frame each."""

    __slots__ = ()

    framing: ClassVar[str] = "uni-ws-joined"

    @staticmethod
    def frame(message: bytes) -> bytes:
        return message + b"\n"

    def write(self, data: bytes) -> None:
        body = data[:-1]  # every message ends with a newline: the last one needs none
        self._raw.write(frame_header(len(body)) + body)


async def uni_websocket_handler(request: web.Request, node: Node) -> web.StreamResponse:
    refused = refuse(request, node)
    if refused is not None:
        return refused
    ws = web.WebSocketResponse(max_msg_size=node.config.uni_websocket.message_size_limit, compress=False,
                               autoping=True, timeout=CLOSE_TIMEOUT)
    await ws.prepare(request)
    raw = request.transport
    if raw is None:
        return ws
    cls = JoinedUniWebSocketTransport if node.config.uni_websocket.join_push_messages else UniWebSocketTransport
    client = Client(node, cls(ws, raw), RequestInfo(transport="uni_websocket", remote=request.remote or "",
                                                          headers=request.headers))
    try:
        first = await ws.receive()
        if first.type is WSMsgType.TEXT or first.type is WSMsgType.BINARY:
            if await connect_unidirectional(client, parse_connect_request(first.data)):
                async for msg in ws:  # nothing to read but the close (and pings, which aiohttp answers)
                    if msg.type is WSMsgType.ERROR:
                        break
        elif first.type is WSMsgType.ERROR:
            # E.g. a first message over message_size_limit (aiohttp already sent close 1009).
            await client.close(DISCONNECT_BAD_REQUEST)
    finally:
        await client.close(DISCONNECT_CONNECTION_CLOSED)
    return ws

