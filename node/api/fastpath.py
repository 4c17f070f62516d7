"""A lean HTTP/1.1 path for the server API on the port aiohttp serves.

aiohttp spends ~75-140 µs of CPU per request here (request and response objects, a handler task, header
serialisation), several times what a publish itself costs (~12 µs), so a backend publishing one message per
request to many channels was bound by aiohttp, not by Fugato. This protocol sits in front of aiohttp's on every
connection of the listening socket: it answers the plain case itself (``POST <prefix>/<method>``, HTTP/1.1,
``Content-Length``, the key in ``X-API-Key`` or ``Authorization: apikey``) and hands the connection, with every
byte it has not consumed, to aiohttp at a request boundary as soon as it sees anything else: a WebSocket or
streaming request, another path, a query string, a chunked body, ``Expect``, an over-long body, HTTP/1.0. So
aiohttp still serves everything it did, with its own errors, and the API answers the same bytes either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from time import monotonic
from typing import Any, Final

import orjson

from node.api.executor import response_body
from node.api.http import ApiHandler, header_key, parse_body
from node.errors import ReplyError

logger = logging.getLogger(__name__)

MAX_HEAD: Final = 8192  # a request head longer than this goes to aiohttp (which has its own limits)
IDLE_TIMEOUT: Final = 75.0  # seconds an idle keep-alive connection stays open, as aiohttp's default
SWEEP_INTERVAL: Final = 5.0  # seconds between looks for idle connections
_HEAD: Final = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
_JSON: Final = b"application/json"  # as Centrifugo's API handler (internal/api/handler.go) and aiohttp's path send
_PHRASES: Final = {200: b"OK"}
_CONTENT_LENGTH: Final = b"\r\nContent-Length: "  # as clients write it (any other spelling: parsed each time)
HEAD_CACHE_SIZE: Final = 256  # request heads (less their Content-Length) kept parsed; starts over when full
_UNSEEN: Final[Any] = object()
_FAILED: Final = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True, eq=False)
class Head:
    """A request head as the fast path uses it, decided once per distinct head (FastApi.heads)."""

    method: str  # the API method
    headers: dict[bytes, bytes]  # lower-cased names; shared by every request with this head: read only
    authorized: bool  # it carries the API key (or none is needed)
    close: bool  # Connection: close
    mode: str  # X-Centrifugo-Error-Mode


class FastApi:
    """Protocol factory for a listening socket: each connection starts on the fast path (see the module)."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], handler: ApiHandler, max_body: int) -> None:
        self.inner = inner
        self.handler = handler
        self.executor = handler.executor
        self.max_body = max_body
        self.prefix = handler.config.handler_prefix.rstrip("/").encode() + b"/"
        self.marker = b"POST " + self.prefix  # how an API request starts
        self.connections: set[FastApiProtocol] = set()  # the ones not handed to aiohttp
        # A head less its Content-Length line → its Head, or None for one aiohttp gets (_parse_head).
        self.heads: dict[bytes, Head | None] = {}
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None

    def head(self, method: str, headers: dict[bytes, bytes]) -> Head:
        """What the server needs of a parsed head (see ``Head``)."""
        return Head(method, headers,
                    self.handler.key_matches(header_key(headers.get(b"x-api-key"),
                                                        headers.get(b"authorization", b""))),
                    headers.get(b"connection", b"").lower() == b"close",
                    headers.get(b"x-centrifugo-error-mode", b"").decode("latin-1"))

    def __call__(self) -> asyncio.Protocol:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)
        return FastApiProtocol(self)

    def _sweep(self) -> None:
        """Close connections idle for IDLE_TIMEOUT. One timer for all: a per-connection one would outlive the
        hand-over of every WebSocket connection as a cancelled handle in the loop's heap."""
        loop = asyncio.get_running_loop()
        deadline = monotonic() - IDLE_TIMEOUT
        for conn in list(self.connections):
            conn.close_if_idle_since(deadline)
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def close_idle(self) -> None:
        """Shutdown: close connections between requests; one with a request running closes after its reply."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close_if_idle_since(float("inf"))


class FastApiProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_busy", "_close_after", "_fast", "_inline", "_last", "_method", "_mode", "_paused",
                 "_transport")

    def __init__(self, fast: FastApi) -> None:
        self._fast = fast
        self._buf = b""
        self._busy = False
        self._inline = False  # inside _answer: a reply given now must not start the next request itself
        self._close_after = False
        self._mode = ""  # X-Centrifugo-Error-Mode of the running request
        self._method = ""  # the running request's API method
        self._paused = False
        self._transport: asyncio.Transport | None = None
        self._last = monotonic()  # when the connection opened or last had a request answered

    # --- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._fast.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data
        if self._busy:
            if len(self._buf) > self._fast.max_body + MAX_HEAD and not self._paused:
                self._paused = True  # a pipelining client waits until the running request is answered
                assert self._transport is not None
                self._transport.pause_reading()
            return
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fast.connections.discard(self)
        self._transport = None

    # --- requests --------------------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every complete request in the buffer, in order, until one needs awaiting or aiohttp."""
        while self._buf and self._transport is not None and not self._transport.is_closing():
            buf = self._buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD or not self._could_be_api(buf):
                    self._hand_over()
                return
            request = self._parse_head(buf[:end])
            if request is None:
                self._hand_over()
                return
            head, length = request
            start = end + 4
            if len(buf) < start + length:
                return  # the body is still coming
            body = buf[start:start + length]
            self._buf = buf[start + length:]
            self._last = monotonic()
            self._close_after = head.close
            if not self._answer(head, body):
                return  # a request is running; it carries on from _answered
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def _could_be_api(self, buf: bytes) -> bool:
        """Whether an incomplete head may still turn out to be an API request."""
        marker = self._fast.marker
        n = min(len(buf), len(marker))
        return buf[:n] == marker[:n]

    def _parse_head(self, head: bytes) -> tuple[Head, int] | None:
        """A plain API request's head and Content-Length; None: aiohttp's business.

        A client sends the same head again and again but for its Content-Length, so the rest of the head is
        parsed (and its API key checked) once and cached: ~3 µs for a usual set of headers against a lookup.
        Where the length is not written as ``Content-Length: `` the head is parsed in full each time."""
        at = head.find(_CONTENT_LENGTH)
        if at < 0:
            fields = self._parse_fields(head)
            return None if fields is None else (self._fast.head(fields[0], fields[2]), fields[1])
        end = head.find(b"\r\n", at + 2)
        if end < 0:
            end = len(head)
        heads = self._fast.heads
        rest = head[:at] + head[end:]
        cached = heads.get(rest, _UNSEEN)
        if cached is _UNSEEN:
            parsed = self._parse_fields(rest)
            # Two Content-Length lines are left to aiohttp, as any repeated header.
            cached = None if parsed is None or b"content-length" in parsed[2] else self._fast.head(parsed[0],
                                                                                                   parsed[2])
            if len(heads) >= HEAD_CACHE_SIZE:
                heads.clear()
            heads[rest] = cached
        if cached is None:
            return None
        raw_length = head[at + len(_CONTENT_LENGTH):end].strip()
        if not raw_length.isdigit():
            return None
        length = int(raw_length)
        if length > self._fast.max_body:
            return None
        return cached, length

    def _parse_fields(self, head: bytes) -> tuple[str, int, dict[bytes, bytes]] | None:
        """(method, Content-Length, lower-cased headers) of a plain API request, parsed in full."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return None
        target = parts[1]
        prefix = self._fast.prefix
        if not target.startswith(prefix) or b"?" in target or b"%" in target:
            return None
        method = target[len(prefix):].decode("ascii", "replace")
        if method not in self._fast.executor.methods:
            return None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1:] in (b" ", b"\t"):
                return None
            name = name.lower()
            if name in headers:
                return None  # repeated headers: let aiohttp decide what they mean
            headers[name] = value.strip()
        if b"transfer-encoding" in headers or b"expect" in headers or b"upgrade" in headers:
            return None
        raw_length = headers.get(b"content-length", b"0")
        if not raw_length.isdigit():
            return None
        length = int(raw_length)
        if length > self._fast.max_body:
            return None
        return method, length, headers

    def _answer(self, head: Head, body: bytes) -> bool:
        """Reply to one request; False while its call is still running (the reply is written when it ends)."""
        if not head.authorized:
            self._write(401, b"", b"application/octet-stream")
            return True
        try:
            params: Any = parse_body(body)
        except orjson.JSONDecodeError:
            self._write(400, b"Bad Request", b"text/plain; charset=utf-8")
            return True
        self._busy = True
        self._mode = head.mode
        self._method = head.method
        self._inline = True
        try:
            self._fast.executor.answer(head.method, params, self._answered)
        finally:
            self._inline = False
        return not self._busy  # answered at once (the memory engine's publish), or still running

    def _answered(self, outcome: bytes | BaseException) -> None:
        """The running request's result or exception: its reply goes out, then the next buffered request."""
        self._busy = False
        if isinstance(outcome, bytes):
            self._write(200, response_body(self._method, outcome), _JSON)
        elif isinstance(outcome, ReplyError):
            status, body = self._fast.handler.error_reply(outcome.error, self._mode)
            self._write(status, body, _JSON)
        else:
            if not isinstance(outcome, asyncio.CancelledError):
                logger.error("API call failed", exc_info=outcome)
            self._fail()
            return
        if not self._inline:  # else _process, which started this request, carries on with the next one
            self._process()

    def _write(self, status: int, body: bytes, content_type: bytes) -> None:
        if self._transport is None:
            return
        self._last = monotonic()
        phrase = _PHRASES.get(status) or HTTPStatus(status).phrase.encode()
        self._transport.write(_HEAD % (status, phrase, content_type, len(body)) + body)
        if self._close_after or self._fast.closing:
            self._transport.close()

    def _fail(self) -> None:
        if self._transport is not None:
            self._transport.write(_FAILED)
            self._transport.close()

    # --- handing over, idling --------------------------------------------------------------------------

    def _hand_over(self) -> None:
        """Give the connection, and what is buffered, to aiohttp for good."""
        transport = self._transport
        assert transport is not None
        self._fast.connections.discard(self)
        buf, self._buf = self._buf, b""
        self._transport = None
        inner = self._fast.inner()
        transport.set_protocol(inner)
        inner.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        if buf:
            inner.data_received(buf)

    def close_if_idle_since(self, deadline: float) -> None:
        """Close unless a request is running or the connection was active after ``deadline``."""
        if not self._busy and self._transport is not None and self._last <= deadline:
            self._transport.close()
