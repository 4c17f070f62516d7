"""The unidirectional WebSocket at ``/connection/uni_websocket``: the first message is a ConnectRequest, then
the server sends bare pushes (``connect`` first) and ``{}`` pings, one text frame each. Later messages from the
client are ignored; closing ends the connection.

Frames are written as in the bidirectional transport (pre-built, straight to the asyncio transport), so this
transport shares its ``ws-text`` framing; the hub keeps unidirectional frames apart by its cache key.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiohttp import WSMsgType, web

from node.client import Client
from node.errors import DISCONNECT_BAD_REQUEST, DISCONNECT_CONNECTION_CLOSED, Disconnect
from node.models import RequestInfo
from node.node import Node
from node.transports.http import connect_unidirectional, parse_connect_request, refuse
from node.transports.streaming import disconnect_push
from node.transports.websocket import CLOSE_TIMEOUT, frame_header

logger = logging.getLogger(__name__)


class UniWebSocketTransport:
    __slots__ = ("_raw", "_ws")

    name: Final = "uni_websocket"
    framing: Final = "ws-text"
    unidirectional: Final = True

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
        """A disconnect push (a unidirectional client may not see close frames, e.g. behind a proxy), then the
        close frame with the same code and reason."""
        if self._ws.closed:
            return
        if disconnect.code == DISCONNECT_CONNECTION_CLOSED.code:
            await self._ws.close()
            return
        if not self._raw.is_closing():
            self.write(self.frame(disconnect_push(disconnect)))
        try:
            await asyncio.wait_for(
                self._ws.close(code=disconnect.code, message=disconnect.reason.encode()), CLOSE_TIMEOUT)
        except TimeoutError:
            self._raw.abort()


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
    client = Client(node, UniWebSocketTransport(ws, raw), RequestInfo(transport="uni_websocket",
                                                                     remote=request.remote or ""))
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

