"""A pipelined command connection to one Redis server, for the engine's hot commands (the Lua scripts).

Every command issued during one event-loop iteration goes out in one write, and the replies, parsed with
hiredis in ``data_received``, are matched to their callers in order: concurrent publishes (API batches, many
HTTP callers, client publishes) share one round trip per burst. Measured on the development VM (EVALSHA of
publish.lua, bursts of 100): redis-py's pipeline costs ~24 µs of CPU per command, valkey-glide's batch
~16-21 µs, this ~5.5-9.5 µs; a lone redis-py call ~80 µs. A caller waits on one future, or a group of
commands on one future for all of them; there is no task per command.

Error replies are values here (``hiredis.ReplyError``), so the shard decides per command what they mean
(NOSCRIPT, MOVED, a failing script). A connection that fails or stalls for ``io_timeout`` fails every command
still waiting with ``PipeError``: the caller does not know whether those ran, and retries them through
redis-py (see redis_shard.py), as it did before this path existed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import hiredis

from node.broker.redis_pubsub import ConnectOptions

logger = logging.getLogger(__name__)

Arg = bytes | str | int

# After a failed connect, commands skip this pipe (and go to redis-py, which has its own retries) for a while,
# so an outage costs one connect attempt per interval rather than one per burst.
RECONNECT_DELAY: Final = 0.5


class PipeError(Exception):
    """The connection failed before the command's reply arrived: it may or may not have run."""


def encode(args: Sequence[Arg], head: bytes = b"", head_count: int = 0) -> bytes:
    """One command in RESP (an array of bulk strings); ``head`` is the encoding of ``head_count`` leading
    arguments that a caller prepared once (the EVALSHA and its SHA)."""
    out = [b"*%d\r\n%s" % (len(args) + head_count, head)]
    for arg in args:
        b = arg if type(arg) is bytes else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Group:
    """Waits for ``left`` consecutive replies and resolves one future with all of them."""

    __slots__ = ("fut", "left", "replies")

    def __init__(self, fut: asyncio.Future[list[Any]], n: int) -> None:
        self.fut = fut
        self.left = n
        self.replies: list[Any] = []


# Who waits for a reply: a future, a group of replies, or a callback (given the reply or the PipeError).
_Waiter = asyncio.Future[Any] | _Group | Callable[[Any], None]
_Future = asyncio.Future  # the loop's futures are of this (C) type: checked by identity on the hot path


class RedisPipe(asyncio.Protocol):
    """See the module docstring. Open with ``connect()``; commands issued while it connects are queued."""

    def __init__(self, host: str, port: int, opts: ConnectOptions, *, db: int = 0, io_timeout: float = 4.0,
                 scripts: Sequence[str] = ()) -> None:
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self._opts = opts
        self._db = db
        self._scripts = scripts
        self._io_timeout = io_timeout
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._pending: deque[_Waiter] = deque()
        self._out: list[bytes] = []
        self._flush_at: asyncio.Handle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._progress = 0.0  # loop time of the last reply (or of the first command after an idle spell)
        self.closed = False
        self.failed_at = 0.0  # loop time of a failed connect; 0 when it did not fail
        self.connecting: asyncio.Task[None] | None = None

    def connect(self) -> None:
        self.connecting = self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(self._loop.create_connection(lambda: self, self.host, self.port,
                                                                ssl=self._opts.ssl_context),
                                   self._opts.connect_timeout)
        except (OSError, TimeoutError) as e:
            logger.info("command connection to %s failed: %s", self.address, e)
            self.failed_at = self._loop.time()
            self._lose(PipeError(f"cannot connect to {self.address}: {e}"))

    # --- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.closed:  # closed while connecting: this connection is not wanted any more
            transport.abort()
            return
        self._transport = transport
        # The handshake goes first, ahead of anything queued meanwhile; its replies only need to be OK. It loads
        # the scripts, so the EVALSHAs behind it find them even on a server that restarted or took over from a
        # failed master (a NOSCRIPT would send those calls the slow way, out of order with their neighbours).
        opts = self._opts
        handshake: list[bytes] = []
        if opts.password:
            handshake.append(encode(("AUTH", opts.username, opts.password) if opts.username
                                    else ("AUTH", opts.password)))
        if self._db:
            handshake.append(encode(("SELECT", self._db)))
        handshake.extend(encode(("SCRIPT", "LOAD", script)) for script in self._scripts)
        self._pending.extendleft([self._check_handshake] * len(handshake))
        self._out[:0] = handshake
        if self._out:
            self._flush()

    def _check_handshake(self, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            logger.warning("command connection to %s refused: %s", self.address, reply)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(PipeError(f"connection to {self.address} lost"))

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        self._progress = self._loop.time()
        while pending:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                logger.error("protocol error on the command connection to %s", self.address)
                self.close()
                return
            if reply is False:
                return
            waiter = pending[0]
            if type(waiter) is _Group:
                waiter.replies.append(reply)
                waiter.left -= 1
                if waiter.left:
                    continue
                pending.popleft()
                if not waiter.fut.done():
                    waiter.fut.set_result(waiter.replies)
            elif type(waiter) is _Future:
                pending.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
            else:
                pending.popleft()
                waiter(reply)  # type: ignore[operator]

    # --- commands --------------------------------------------------------------------------------------

    def call(self, command: bytes) -> asyncio.Future[Any]:
        """Send one encoded command; the future gets its reply (an error reply as a ``hiredis.ReplyError``
        value) or ``PipeError``."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self.closed:
            fut.set_exception(PipeError(f"connection to {self.address} is closed"))
            return fut
        self._queue(command, fut)
        return fut

    def call_then(self, command: bytes, callback: Callable[[Any], None]) -> None:
        """Send one encoded command; ``callback`` gets its reply (an error reply as a value) or the PipeError,
        synchronously in the protocol callback: no future at all for callers that only react to the reply."""
        if self.closed:
            callback(PipeError(f"connection to {self.address} is closed"))
            return
        self._queue(command, callback)

    def call_many(self, commands: list[bytes]) -> asyncio.Future[list[Any]]:
        """Send several encoded commands; one future gets the list of their replies, in order."""
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        if self.closed:
            fut.set_exception(PipeError(f"connection to {self.address} is closed"))
            return fut
        self._queue(b"".join(commands), _Group(fut, len(commands)))
        return fut

    def _queue(self, data: bytes, waiter: _Waiter) -> None:
        if not self._pending:
            self._progress = self._loop.time()
        self._pending.append(waiter)
        self._out.append(data)
        if self._flush_at is None and self._transport is not None:
            # Everything issued until the loop comes round again goes out in this one write.
            self._flush_at = self._loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._io_timeout, self._watch)

    def _flush(self) -> None:
        self._flush_at = None
        if self._transport is None or not self._out:
            return
        out, self._out = self._out, []
        self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _watch(self) -> None:
        """A server that stops answering (but keeps the socket open) must not hold callers forever."""
        self._watchdog = None
        if not self._pending or self.closed:
            return
        idle = self._loop.time() - self._progress
        if idle >= self._io_timeout:
            logger.warning("command connection to %s: no reply for %.1fs; closing it", self.address, idle)
            self._lose(PipeError(f"no reply from {self.address} within {self._io_timeout}s"))
            return
        self._watchdog = self._loop.call_later(self._io_timeout - idle, self._watch)

    def _lose(self, error: PipeError) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self._out.clear()
        for handle in (self._flush_at, self._watchdog):
            if handle is not None:
                handle.cancel()
        self._flush_at = self._watchdog = None
        pending, self._pending = self._pending, deque()
        for waiter in pending:
            fut = waiter.fut if type(waiter) is _Group else waiter
            if type(fut) is not _Future:
                fut(error)  # type: ignore[operator]
            elif not fut.done():
                fut.set_exception(error)

    def close(self) -> None:
        self._lose(PipeError(f"connection to {self.address} closed"))
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
