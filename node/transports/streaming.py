"""Transports over one long HTTP response: HTTP-streaming and SSE, bidirectional (emulation: commands arrive
through ``/emulation``) and unidirectional (``uni_http_stream``, ``uni_sse``). All speak JSON; the bidirectional
HTTP-stream speaks protobuf too when its request body is ``application/octet-stream`` (Centrifugo's negotiation).

Like the WebSocket transport, these write pre-framed bytes straight to the asyncio transport, so a fan-out
never awaits: aiohttp's ``StreamResponse.write`` is a coroutine and would need a task per write. aiohttp sends
the status line and headers in ``prepare()``; after that the body belongs to us, so its framing does too:

* HTTP/1.1: the response is ``Transfer-Encoding: chunked`` and every ``write()`` goes out as one chunk (a
  flush's frames together). Chunked streams are what fetch readers (centrifuge-js), EventSource and aiohttp's
  client all read incrementally, and the connection stays reusable after the stream ends.
  ``StreamResponse.write_eof()`` sends the last chunk; our chunks never went through aiohttp's writer, so its
  state is still "nothing written" and it only adds the terminator.
* HTTP/1.0 (no chunking): the body is raw bytes and ends when the connection closes.

A connection ends when the client closes it (aiohttp cancels the handler: the external app runs with
``handler_cancellation``), or when the server closes the client: a ``disconnect`` push, then end of body.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ClassVar, Final

from aiohttp import HttpVersion11, web

from node.client import Client
from node.config import ConnectCodeToHttpResponse
from node.errors import DISCONNECT_BAD_REQUEST, DISCONNECT_CONNECTION_CLOSED, Disconnect
from node.models import RequestInfo
from node.node import Node
from node.protocol import proto
from node.transports.emulation import Emulation
from node.transports.http import NO_CACHE_HEADERS, cors_headers, preflight, protobuf_body, read_body, refuse
from node.transports.uni import connect_unidirectional_code, disconnect_message, parse_connect_request

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT: Final = 5.0  # how long the end of a stream may wait for a slow reader before the socket is dropped


class _ResponseStream(abc.ABC):
    """The body of a prepared streaming response, written without awaiting. ``done`` resolves when the stream
    ends (closed by the server, or found lost on a write); the connection's handler waits on it.

    A stream created ``held`` keeps what is written until ``release`` (the response is not prepared yet): a
    unidirectional connect whose failure may become a plain HTTP response (``connect_code_to_http_response``)
    must run before the status line is sent."""

    __slots__ = ("_chunked", "_close_pending", "_ended", "_held", "_raw", "_resp", "done", "name", "session",
                 "unidirectional")

    framing: ClassVar[str]  # set by each subclass
    protocol: ClassVar[str] = "json"

    def __init__(self, name: str, unidirectional: bool, resp: web.StreamResponse, raw: asyncio.Transport,
                 chunked: bool, *, held: bool = False) -> None:
        self.name = name
        self.unidirectional = unidirectional
        self._resp = resp
        self._raw = raw
        self._chunked = chunked
        self._ended = False
        self._held: list[bytes] | None = [] if held else None
        self._close_pending = False  # closed while held: end the response once released
        self.session = ""  # the emulation session of a bidirectional stream (see emulation.py)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def release(self) -> None:
        """The response is prepared now: send what was held (and end it if the stream closed meanwhile)."""
        held, self._held = self._held, None
        if held:
            self.write(b"".join(held))
        if self._close_pending:
            await self._finish()

    def discard(self) -> None:
        """Never send the held stream (the request gets a plain HTTP response instead)."""
        self._held = None
        self._ended = True
        self._end()

    @staticmethod
    @abc.abstractmethod
    def frame(message: bytes) -> bytes:
        """One message in this stream's framing (each subclass has its own)."""

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
            return
        raw = self._raw
        if raw.is_closing():
            self._end()
            return
        if self._chunked:
            # One chunk per write; writelines spares a copy of a large batch.
            raw.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            raw.write(data)

    def buffered(self) -> int:
        if self._held is not None:
            return sum(map(len, self._held))
        return self._raw.get_write_buffer_size()

    @property
    def closed(self) -> bool:
        if self._raw.is_closing():
            self._end()  # the client went away: let the handler close the connection
            return True
        return self._ended

    def _end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def close(self, disconnect: Disconnect) -> None:
        if self._ended:
            return
        self._ended = True
        if self._raw.is_closing():
            self._end()
            return
        if disconnect.code != DISCONNECT_CONNECTION_CLOSED.code:
            self.write(self.frame(disconnect_message(self.protocol, disconnect, self.unidirectional)))
        if self._held is not None:
            self._close_pending = True  # the response is not prepared yet: release() ends it
            return
        await self._finish()

    async def _finish(self) -> None:
        try:
            await asyncio.wait_for(self._resp.write_eof(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._raw.abort()
        except ConnectionError:
            pass  # the client left while the stream was ending
        finally:
            self._end()


class HttpStreamTransport(_ResponseStream):
    """Newline-delimited JSON: each message followed by ``\\n``."""

    __slots__ = ()
    framing = "http-stream-json"

    @staticmethod
    def frame(message: bytes) -> bytes:
        return message + b"\n"


class ProtobufHttpStreamTransport(_ResponseStream):
    """Varint-length-delimited protobuf ``Reply`` messages back to back (a ping is the single byte ``0x00``)."""

    __slots__ = ()
    framing = "http-stream-protobuf"
    protocol = "protobuf"

    @staticmethod
    def frame(message: bytes) -> bytes:
        return proto.delimit(message)


class SseTransport(_ResponseStream):
    """Server-sent events: each message one ``data:`` event (messages never contain a newline)."""

    __slots__ = ()
    framing = "sse"

    @staticmethod
    def frame(message: bytes) -> bytes:
        return b"data: " + message + b"\n\n"


Opener = Callable[[Client], Awaitable[int]]  # sets the connection up: 0, or the code it was refused with


async def _serve(request: web.Request, node: Node, cls: type[_ResponseStream], name: str, unidirectional: bool,
                 content_type: str, open_connection: Opener, emulation: Emulation | None = None,
                 to_http: ConnectCodeToHttpResponse | None = None) -> web.StreamResponse:
    headers = {**NO_CACHE_HEADERS, **cors_headers(request), "Content-Type": content_type}
    resp = web.StreamResponse(headers=headers)
    chunked = request.version >= HttpVersion11
    if chunked:
        resp.enable_chunked_encoding()
    else:
        resp.force_close()
    raw = request.transport
    if raw is None:
        return resp
    # With connect_code_to_http_response on, the connect runs before the status line is sent.
    held = to_http is not None and to_http.enabled
    if not held:
        await resp.prepare(request)
    transport = cls(name, unidirectional, resp, raw, chunked, held=held)
    if cls is SseTransport:
        transport.write(b"\r\n")  # sent at once, so that the EventSource opens before the first message
    client = Client(node, transport, RequestInfo(transport=name, remote=request.remote or "",
                                                 headers=request.headers))
    if emulation is not None:
        transport.session = emulation.register(client)
    try:
        refused = await open_connection(client)
        if held:
            assert to_http is not None
            answer = next((t.to for t in to_http.transforms if refused and t.code == refused), None)
            if answer is not None:
                transport.discard()
                return web.Response(status=answer.status_code, text=answer.body, headers=cors_headers(request))
            await resp.prepare(request)
            await transport.release()
        if not refused:
            await transport.done
    finally:
        if emulation is not None:
            emulation.unregister(client)
        await client.close(DISCONNECT_CONNECTION_CLOSED)
    return resp


async def _accept(request: web.Request, node: Node, limit: int, *, query: bool = False) -> bytes | web.Response:
    """What every streaming endpoint starts with: a CORS preflight is answered, a refused connection gets its
    response, else the connect payload: the body, or with ``query`` on a GET (SSE) ``?cf_connect=<url-encoded
    JSON>``; 413 when it is longer than ``limit``."""
    if request.method == "OPTIONS":
        return preflight(request, node.config.client.allowed_origins)
    refused = refuse(request, node)
    if refused is not None:
        return refused
    if query and request.method != "POST":
        data: bytes | None = request.query.get("cf_connect", "").encode()
        if len(data or b"") > limit:
            data = None
    else:
        data = await read_body(request, limit)
    return web.Response(status=413, headers=cors_headers(request)) if data is None else data


def _bidirectional(body: bytes) -> Opener:
    async def open_connection(client: Client) -> int:
        if not body:
            await client.close(DISCONNECT_BAD_REQUEST)
            return DISCONNECT_BAD_REQUEST.code
        return 0 if await client.handle_data(body) else DISCONNECT_BAD_REQUEST.code

    return open_connection


def _unidirectional(body: bytes) -> Opener:
    async def open_connection(client: Client) -> int:
        return await connect_unidirectional_code(client, parse_connect_request(body))

    return open_connection


async def http_stream_handler(request: web.Request, node: Node, emulation: Emulation) -> web.StreamResponse:
    """``POST /connection/http_stream``: the body is the first command frame (the connect command), JSON, or
    varint-delimited protobuf ``Command``s when it is ``application/octet-stream`` (the response is then too)."""
    body = await _accept(request, node, node.config.http_stream.max_request_body_size)
    if isinstance(body, web.Response):
        return body
    if not body:
        return web.Response(status=400, headers=cors_headers(request))
    if protobuf_body(request):
        return await _serve(request, node, ProtobufHttpStreamTransport, "http_stream", False,
                            "application/octet-stream", _bidirectional(body), emulation)
    return await _serve(request, node, HttpStreamTransport, "http_stream", False, "application/json",
                        _bidirectional(body), emulation)


async def sse_handler(request: web.Request, node: Node, emulation: Emulation) -> web.StreamResponse:
    """``GET /connection/sse?cf_connect=<command frame>`` (or POST with the frame as body)."""
    data = await _accept(request, node, node.config.sse.max_request_body_size, query=True)
    if isinstance(data, web.Response):
        return data
    if not data:
        return web.Response(status=400, headers=cors_headers(request))
    return await _serve(request, node, SseTransport, "sse", False, "text/event-stream; charset=utf-8",
                        _bidirectional(data), emulation)


async def uni_http_stream_handler(request: web.Request, node: Node) -> web.StreamResponse:
    """``POST /connection/uni_http_stream``: the body is a ConnectRequest."""
    cfg = node.config.uni_http_stream
    body = await _accept(request, node, cfg.max_request_body_size)
    if isinstance(body, web.Response):
        return body
    return await _serve(request, node, HttpStreamTransport, "uni_http_stream", True, "application/json",
                        _unidirectional(body), to_http=cfg.connect_code_to_http_response)


async def uni_sse_handler(request: web.Request, node: Node) -> web.StreamResponse:
    """``GET /connection/uni_sse?cf_connect=<ConnectRequest>`` (or POST with the request as body)."""
    cfg = node.config.uni_sse
    data = await _accept(request, node, cfg.max_request_body_size, query=True)
    if isinstance(data, web.Response):
        return data
    return await _serve(request, node, SseTransport, "uni_sse", True, "text/event-stream; charset=utf-8",
                        _unidirectional(data), to_http=cfg.connect_code_to_http_response)
