"""The HTTP proxy's client: JSON POSTs to one backend over a pool of kept-alive HTTP/1.1 connections.

A proxy sends one small POST per hook call, always to the same endpoint, and reads a small JSON answer: the
general-purpose ``aiohttp.ClientSession`` spent most of a proxied connect's CPU on what this does not need
(cookies, redirects, URL and header objects, a payload and a response object, tracing, a task per request).
Here a request is one pre-rendered byte string written to an idle connection of the pool, and the answer is
parsed by ``httptools`` (llhttp, the parser of Node.js) straight into a future.

Behaviour kept from the session it replaces: at most ``limit`` connections (callers beyond that wait for one),
idle connections reused and closed after ``KEEPALIVE`` seconds unused, the proxy's ``timeout`` bounding the
whole call (connecting included), TLS with the proxy's context. A connection that was reused and closed by the
backend before any byte of the answer (a keep-alive race) is retried once on a new connection, as Go's
transport does for Centrifugo.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import httptools

# Idle connections older than this are closed rather than reused (aiohttp's and Go's order of magnitude).
KEEPALIVE: Final = 15.0
# An answer larger than this is not a proxy response: the connection is dropped.
MAX_ANSWER: Final = 16 * 1024 * 1024


class HttpCallError(Exception):
    """No answer: the connection failed, closed, or the answer was not HTTP."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; at most one request in flight (no pipelining)."""

    __slots__ = ("_body", "_parser", "_size", "_waiter", "closed", "got_bytes", "idle_since", "keep_alive",
                 "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self.closed = False
        self.got_bytes = False
        self.keep_alive = True
        self.idle_since = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HttpCallError(f"bad HTTP answer: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpCallError("connection closed by the backend"))

    # --- httptools callbacks ---------------------------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_ANSWER:
            self._fail(HttpCallError("answer too large"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), b"".join(self._body)))
        self._waiter = None

    # --- the pool's side -------------------------------------------------------------------------------------

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send one request; the future gets (status, body)."""
        assert self.transport is not None
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self._body = []
        self._size = 0
        self.got_bytes = False
        self.transport.write(raw)
        return waiter

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """POSTs to ``url`` over at most ``limit`` kept-alive connections, each call bounded by ``timeout`` seconds
    (``TimeoutError``).

    The common call takes an idle connection, writes and waits for the answer without any other await: no
    semaphore, no task, no timer of its own. Its deadline goes at the end of a FIFO (every call of the pool has
    the same timeout, so deadlines come in order) that one timer per pool walks, armed for the oldest call still
    waiting: it fires about once per ``timeout`` however many calls there are (as aiohttp keeps one heartbeat
    handle per connection rather than one per message). A call that must wait for a connection slot or open a
    connection (or retry on a new one) is the uncommon one: it is bounded by its own ``asyncio.timeout_at``.
    """

    def __init__(self, url: str, *, limit: int, timeout: float, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl_context if parts.scheme == "https" else None
        self._server_hostname = (server_hostname or self._host) if self._ssl is not None else None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = self._port == (443 if parts.scheme == "https" else 80)
        host_header = parts.netloc.rpartition("@")[2] if not default_port else self._host
        # Everything before the per-call headers: rendered once.
        self._head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("latin-1")
        self._timeout = timeout
        self._limit = limit
        self._busy = 0  # connections in use or being opened: at most limit
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._all: set[_Connection] = set()
        # The waiting calls of the common path, oldest first, and the one timer that expires them.
        self._deadlines: collections.deque[tuple[float, asyncio.Future[tuple[int, bytes]]]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, body: bytes, headers: bytes) -> tuple[int, bytes]:
        """POST ``body`` with ``headers`` (rendered lines, see ``render_headers``); (status, answer body)."""
        raw = b"".join((self._head, headers, b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        conn = self._take_idle() if not self._slot_waiters else None  # callers waiting for a slot go first
        if conn is not None:
            waiter = conn.request(raw)
            deadlines = self._deadlines
            deadlines.append((deadline, waiter))
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
            try:
                answer = await waiter
            except HttpCallError:
                self._drop(conn)
                if conn.got_bytes:
                    raise
                # The backend closed an idle connection as we reused it: once more, on a new one (below).
            except BaseException:  # timeout or cancellation mid-call: the answer may still come, drop it
                self._drop(conn)
                raise
            else:
                self._release(conn)
                return answer
            finally:
                # Calls mostly end in the order they started: forget the finished ones at the head now, so the
                # FIFO holds about the calls in flight, not every call of the last ``timeout`` seconds.
                while deadlines and deadlines[0][1].done():
                    deadlines.popleft()
        async with asyncio.timeout_at(deadline):
            return await self._post_new(raw)

    async def _post_new(self, raw: bytes) -> tuple[int, bytes]:
        """The uncommon call: wait for a slot, reuse a connection freed meanwhile or open one."""
        while True:
            conn = self._take_idle()
            if conn is not None:
                reused = True
                break
            if self._busy < self._limit:
                reused = False
                self._busy += 1
                conn = await self._open_counted()
                break
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken and then cancelled: hand the wake-up on
                raise
        try:
            answer = await conn.request(raw)
        except HttpCallError:
            if not (reused and not conn.got_bytes):
                self._drop(conn)
                raise
            self._close(conn)  # the backend closed an idle connection as we reused it: its slot, a new one
            conn = await self._open_counted()
            try:
                answer = await conn.request(raw)
            except BaseException:
                self._drop(conn)
                raise
        except BaseException:
            self._drop(conn)
            raise
        self._release(conn)
        return answer

    def _take_idle(self) -> _Connection | None:
        """A kept-alive connection to reuse, now counted busy; None when none is idle (or callers wait)."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE:
                self._busy += 1
                return conn
            self._close(conn)
        return None

    async def _open_counted(self) -> _Connection:
        """Open a connection in a slot already counted busy; the slot freed if that fails."""
        try:
            return await self._open()
        except BaseException:
            self._free_slot()
            raise

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl,
                                                   server_hostname=self._server_hostname)
        except (OSError, ssl.SSLError) as e:
            raise HttpCallError(f"cannot connect to {self._host}:{self._port}: {e.strerror or e}") from None
        self._all.add(conn)
        return conn

    def _expire(self) -> None:
        """The pool's timer: fail the calls past their deadline, then wait for the oldest one still waiting."""
        loop = self._loop
        assert loop is not None
        deadlines = self._deadlines
        now = loop.time()
        while deadlines:
            deadline, waiter = deadlines[0]
            if waiter.done():
                deadlines.popleft()
            elif deadline <= now:
                deadlines.popleft()
                waiter.set_exception(TimeoutError())
            else:
                self._timer = loop.call_at(deadline, self._expire)
                return
        self._timer = None

    def _release(self, conn: _Connection) -> None:
        if conn.closed or not conn.keep_alive:
            self._drop(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._free_slot()

    def _drop(self, conn: _Connection) -> None:
        self._close(conn)
        self._free_slot()

    def _close(self, conn: _Connection) -> None:
        conn.close()
        self._all.discard(conn)

    def _free_slot(self) -> None:
        self._busy -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def render_headers(headers: Mapping[str, str]) -> bytes:
    """Header lines for ``post``; a name or value that could split the request (CR, LF) is left out."""
    out = []
    for name, value in headers.items():
        line = f"{name}: {value}\r\n"
        if line.count("\r") == 1 and line.count("\n") == 1 and ":" not in name:
            out.append(line.encode())
    return b"".join(out)
