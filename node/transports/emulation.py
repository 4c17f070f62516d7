"""Bidirectional emulation: the sessions of this node's HTTP-stream and SSE connections, and the ``/emulation``
endpoint through which their clients send commands.

An emulated connection receives over one long response (HTTP-stream or SSE) and sends each command batch as a
separate ``POST /emulation`` carrying ``{"session", "node", "data"}``, where ``session`` and ``node`` come from
its connect reply. A protobuf client (HTTP-stream only) posts an ``application/octet-stream`` body instead: an
``EmulationRequest`` whose ``data`` is the varint-delimited command frame. Either way ``data`` reaches the
session as bytes, and the session's client decodes it with its own protocol.

The request may land on any node (or worker): the node named in it runs the commands, so a request for another
node is forwarded to that node alone through the control channel.

The session id is a random secret, not the client id: client ids are visible to other users (presence), and
anyone who knows a session can send commands on that connection's behalf.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Final

from aiohttp import web
from google.protobuf.message import DecodeError as ProtobufDecodeError

from node.client import Client
from node.node import Node
from node.protocol import client_pb2 as pb
from node.protocol import rawjson
from node.transports.http import cors_headers, origin_ok, preflight, protobuf_body, read_body

logger = logging.getLogger(__name__)

ACTION: Final = "emulation"  # control message kind of a forwarded request


def parse_json_request(body: bytes) -> tuple[str, str, bytes] | None:
    """``(session, node, data)`` of a JSON request (``data`` is the command frame as a string); None if malformed."""
    req = rawjson.load_object(body)
    if req is None:
        return None
    session, node_id, data = req.get("session"), req.get("node"), req.get("data")
    if not isinstance(session, str) or not isinstance(node_id, str) or not isinstance(data, str) or not data:
        return None
    return session, node_id, data.encode()


def parse_protobuf_request(body: bytes) -> tuple[str, str, bytes] | None:
    """``(session, node, data)`` of an ``EmulationRequest``; None if it does not decode or carries no session or
    no commands (proto3 cannot tell a missing field from an empty one)."""
    req = pb.EmulationRequest()
    try:
        req.ParseFromString(body)
    except ProtobufDecodeError:
        return None
    if not req.session or not req.data:
        return None
    return req.session, req.node, req.data


class Emulation:
    """Session registry plus the ``/emulation`` handler. Commands of one session run one batch at a time, in
    arrival order, as a WebSocket reader would run them (each HTTP request is handled concurrently otherwise)."""

    __slots__ = ("_by_client", "_node", "_sessions")

    def __init__(self, node: Node) -> None:
        self._node = node
        self._sessions: dict[str, tuple[Client, asyncio.Lock]] = {}
        self._by_client: dict[str, str] = {}
        node.controller.on_action(ACTION, self._forwarded)

    def register(self, client: Client) -> str:
        """A new session for an emulated connection; the connect reply carries it."""
        session = secrets.token_urlsafe(18)
        self._sessions[session] = (client, asyncio.Lock())
        self._by_client[client.id] = session
        return session

    def unregister(self, client: Client) -> None:
        session = self._by_client.pop(client.id, None)
        if session is not None:
            self._sessions.pop(session, None)

    async def dispatch(self, session: str, data: bytes) -> None:
        """Run a command frame on a local session. An unknown session is ignored: its connection is gone, and
        its client learns that from the end of its stream."""
        entry = self._sessions.get(session)
        if entry is None:
            return
        client, lock = entry
        async with lock:
            await client.handle_data(data)

    async def _forwarded(self, params: dict[str, Any]) -> None:
        session, data = params.get("session"), params.get("data")
        if isinstance(session, str) and isinstance(data, bytes):
            await self.dispatch(session, data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``POST /emulation``: 204 once the commands ran here or were handed to the owning node; 400 for a
        malformed body, 404 for a node that is not (or no longer) in the cluster, 413 for a too large body."""
        node = self._node
        if request.method == "OPTIONS":
            return preflight(request, node.config.client.allowed_origins)
        if not origin_ok(request, node.config.client.allowed_origins):
            return web.Response(status=403, text="Invalid origin")
        body = await read_body(request, node.config.emulation.max_request_body_size)
        if body is None:
            return web.Response(status=413, headers=cors_headers(request))
        req = parse_protobuf_request(body) if protobuf_body(request) else parse_json_request(body)
        if req is None:
            return web.Response(status=400, headers=cors_headers(request))
        session, node_id, data = req
        if node_id == node.id:
            await self.dispatch(session, data)
        elif node.controller.knows(node_id):
            # msgpack carries bytes as bin (use_bin_type), so a protobuf frame crosses nodes unchanged.
            await node.controller.send_to(node_id, ACTION, {"session": session, "data": data})
        else:
            return web.Response(status=404, headers=cors_headers(request))
        return web.Response(status=204, headers=cors_headers(request))
