"""PUB/SUB connections of the Redis engine.

A ``PubSubConnection`` is an asyncio Protocol on a dedicated socket: replies are parsed with hiredis inside
``data_received`` and messages go straight to the handler, synchronously, so the path from the socket to the
client queues has no await and no task per message. ``StandalonePubSub`` keeps one such connection to a server
(SUBSCRIBE); ``ClusterPubSub`` keeps one per Cluster master that owns subscribed channels (SSUBSCRIBE), and
moves channels when slots move or a master fails. Both re-establish subscriptions after a failure and report
the re-subscribed channels, because messages published meanwhile were lost and subscribers must recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

logger = logging.getLogger(__name__)

# The messages that arrived in one read, each as hiredis gives it: [b"message" | b"smessage", channel, payload].
# Called once per read (the messages of a burst are decoded together); must not await.
MessageHandler = Callable[[list[list[bytes]]], None]
ResyncHandler = Callable[[list[bytes]], None]  # channels re-subscribed after messages may have been lost
ErrorHandler = Callable[[str], None]  # a PUB/SUB failure, by kind (base.PUBSUB_ERRORS), for metrics


def _ignore_error(kind: str) -> None:
    return None

SUBSCRIBE_BATCH: Final = 512
RETRY_DELAY: Final = 0.25
MAX_RETRY_DELAY: Final = 1.0


def _encode(args: Iterable[bytes | str | int]) -> bytes:
    parts = []
    count = 0
    for arg in args:
        b = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        count += 1
    return b"*%d\r\n" % count + b"".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions:
    username: str = ""
    password: str = ""
    ssl_context: ssl.SSLContext | None = None
    connect_timeout: float = 1.0


class PubSubError(Exception):
    """A PUB/SUB command failed (the server answered with an error, or the connection is gone)."""


class PubSubConnection(asyncio.Protocol):
    """One PUB/SUB socket. Commands are pipelined; their confirmations are matched in order."""

    def __init__(self, on_message: MessageHandler, on_lost: Callable[[PubSubConnection], None],
                 on_moved: Callable[[PubSubConnection, bytes], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_moved = on_moved
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        # Pending commands: (kind, channels still to confirm, future). Plain replies (AUTH) have no channels.
        self._pending: deque[tuple[bytes, set[bytes], asyncio.Future[None]]] = deque()
        self.closed = False
        self.address = ""

    @classmethod
    async def open(cls, host: str, port: int, opts: ConnectOptions, on_message: MessageHandler,
                   on_lost: Callable[[PubSubConnection], None],
                   on_moved: Callable[[PubSubConnection, bytes], None]) -> PubSubConnection:
        loop = asyncio.get_running_loop()
        proto = cls(on_message, on_lost, on_moved)
        proto.address = f"{host}:{port}"
        await asyncio.wait_for(loop.create_connection(lambda: proto, host, port, ssl=opts.ssl_context),
                               opts.connect_timeout)
        if opts.password:
            auth = ("AUTH", opts.username, opts.password) if opts.username else ("AUTH", opts.password)
            await asyncio.wait_for(proto._command(b"auth", auth, ()), opts.connect_timeout)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._pending:
            _, _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(PubSubError(f"connection to {self.address} lost"))
        self._on_lost(self)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _command(self, kind: bytes, args: Iterable[bytes | str | int],
                 channels: Iterable[bytes]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed or self._transport is None:
            fut.set_exception(PubSubError(f"connection to {self.address} is closed"))
            return fut
        self._pending.append((kind, set(channels), fut))
        self._transport.write(_encode(args))
        return fut

    def subscribe(self, command: str, channels: list[bytes]) -> asyncio.Future[None]:
        """Send (S)SUBSCRIBE; the future resolves when every channel is confirmed."""
        return self._command(command.lower().encode(), (command, *channels), channels)

    def unsubscribe(self, command: str, channels: list[bytes]) -> asyncio.Future[None]:
        return self._command(command.lower().encode(), (command, *channels), channels)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        messages: list[list[bytes]] = []
        try:
            while (obj := reader.gets()) is not False:
                if type(obj) is list and len(obj) == 3:
                    kind = obj[0]
                    if kind == b"smessage" or kind == b"message":  # noqa: PLR1714 (hot path: no tuple building)
                        messages.append(obj)
                    else:
                        self._confirm(kind, obj[1])
                elif isinstance(obj, hiredis.ReplyError):
                    self._fail(obj)
                else:
                    self._plain_reply()
        except hiredis.ProtocolError:  # the messages read before it are still delivered
            logger.error("protocol error on PUB/SUB connection %s", self.address)
            self.close()
        if messages:
            try:
                self._on_message(messages)
            except Exception:
                logger.exception("PUB/SUB message handler failed")

    def _confirm(self, kind: bytes, channel: Any) -> None:
        if self._pending:
            head_kind, channels, fut = self._pending[0]
            if head_kind == kind and channel in channels:
                channels.discard(channel)
                if not channels:
                    self._pending.popleft()
                    if not fut.done():
                        fut.set_result(None)
                return
        if kind in (b"sunsubscribe", b"unsubscribe"):
            # Not asked for: the server dropped the channel (its slot moved to another master).
            self._on_moved(self, channel)

    def _fail(self, error: Exception) -> None:
        if self._pending:
            _, _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(PubSubError(str(error)))

    def _plain_reply(self) -> None:
        if self._pending and not self._pending[0][1]:
            _, _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(None)


class _Base:
    """Desired-state bookkeeping shared by both topologies."""

    def __init__(self, opts: ConnectOptions, on_message: MessageHandler, on_resync: ResyncHandler,
                 on_error: ErrorHandler = _ignore_error) -> None:
        self._opts = opts
        self._on_message = on_message
        self._on_resync = on_resync
        self._on_error = on_error
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_tasks(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class StandalonePubSub(_Base):
    """SUBSCRIBE on one connection to a standalone Redis; reconnects and re-subscribes after a failure."""

    def __init__(self, host: str, port: int, opts: ConnectOptions, on_message: MessageHandler,
                 on_resync: ResyncHandler, on_error: ErrorHandler = _ignore_error) -> None:
        super().__init__(opts, on_message, on_resync, on_error)
        self._host, self._port = host, port
        self._channels: set[bytes] = set()
        self._conn: PubSubConnection | None = None
        self._ready = asyncio.Event()

    @property
    def healthy(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def start(self) -> None:
        self._conn = await self._open()
        self._ready.set()

    async def _open(self) -> PubSubConnection:
        return await PubSubConnection.open(self._host, self._port, self._opts, self._on_message, self._lost,
                                           lambda conn, ch: None)

    async def close(self) -> None:
        await self._close_tasks()
        if self._conn is not None:
            self._conn.close()

    async def subscribe(self, channels: list[bytes]) -> None:
        self._channels.update(channels)
        await self._send("SUBSCRIBE", channels)

    async def unsubscribe(self, channels: list[bytes]) -> None:
        self._channels.difference_update(channels)
        await self._send("UNSUBSCRIBE", channels)

    async def _send(self, command: str, channels: list[bytes]) -> None:
        await self._ready.wait()
        conn = self._conn
        if conn is None:
            raise PubSubError("not connected")
        futures = [conn.subscribe(command, channels[i:i + SUBSCRIBE_BATCH])
                   for i in range(0, len(channels), SUBSCRIBE_BATCH)]
        await asyncio.gather(*futures)

    def _lost(self, conn: PubSubConnection) -> None:
        if self._closing or conn is not self._conn:
            return
        logger.warning("PUB/SUB connection to %s lost; reconnecting", conn.address)
        self._on_error("connection_lost")
        self._ready.clear()
        self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        delay = RETRY_DELAY
        while not self._closing:
            try:
                conn = await self._open()
                channels = list(self._channels)
                self._conn = conn
                for i in range(0, len(channels), SUBSCRIBE_BATCH):
                    await conn.subscribe("SUBSCRIBE", channels[i:i + SUBSCRIBE_BATCH])
            except (OSError, TimeoutError, PubSubError) as e:
                logger.info("PUB/SUB reconnect to %s:%d failed: %s", self._host, self._port, e)
                self._on_error("reconnect_failed")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            self._ready.set()
            logger.info("PUB/SUB connection to %s:%d restored (%d channels)", self._host, self._port, len(channels))
            self._on_resync(channels)
            return


class ClusterPubSub(_Base):
    """SSUBSCRIBE on one connection per Cluster master owning subscribed channels' slots.

    A failed connection or a slot moved away makes its channels "orphans": a repair task refreshes the slot
    map from the cluster and subscribes them at their new masters, retrying until it succeeds."""

    def __init__(self, cluster: RedisCluster, opts: ConnectOptions, on_message: MessageHandler,
                 on_resync: ResyncHandler, on_error: ErrorHandler = _ignore_error) -> None:
        super().__init__(opts, on_message, on_resync, on_error)
        self._cluster = cluster
        self._conns: dict[str, PubSubConnection] = {}  # master "host:port" → connection
        self._opening: dict[str, asyncio.Future[PubSubConnection]] = {}
        self._where: dict[bytes, str] = {}  # channel → master it is subscribed at
        self._orphans: set[bytes] = set()
        self._desired: set[bytes] = set()
        self._repairing = False

    @property
    def healthy(self) -> bool:
        return not self._orphans and all(not c.closed for c in self._conns.values())

    async def start(self) -> None:
        return None  # connections open on demand

    async def close(self) -> None:
        await self._close_tasks()
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _master(self, channel: bytes) -> tuple[str, str, int]:
        node = self._cluster.nodes_manager.get_node_from_slot(key_slot(channel))
        return node.name, node.host, int(node.port)

    async def _conn(self, name: str, host: str, port: int) -> PubSubConnection:
        conn = self._conns.get(name)
        if conn is not None and not conn.closed:
            return conn
        pending = self._opening.get(name)
        if pending is not None:
            return await pending
        fut: asyncio.Future[PubSubConnection] = asyncio.get_running_loop().create_future()
        self._opening[name] = fut
        try:
            conn = await PubSubConnection.open(host, port, self._opts, self._on_message, self._lost, self._moved)
            self._conns[name] = conn
            fut.set_result(conn)
            return conn
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: the waiters re-raise it themselves
            raise
        finally:
            del self._opening[name]

    async def subscribe(self, channels: list[bytes]) -> None:
        self._desired.update(channels)
        try:
            await self._subscribe_at_masters(channels)
        except (PubSubError, OSError, TimeoutError) as e:
            # Most likely a stale slot map (a failover or a slot migration): refresh it and try once more.
            logger.info("SSUBSCRIBE failed (%s); refreshing the slot map", e)
            self._on_error("subscribe_failed")
            await self._cluster.nodes_manager.initialize()
            await self._subscribe_at_masters(channels)

    async def _subscribe_at_masters(self, channels: Iterable[bytes]) -> None:
        by_master: dict[tuple[str, str, int], dict[int, list[bytes]]] = {}
        for ch in channels:
            by_master.setdefault(self._master(ch), {}).setdefault(key_slot(ch), []).append(ch)
        for (name, host, port), slots in by_master.items():
            conn = await self._conn(name, host, port)
            # SSUBSCRIBE takes channels of one slot only; the commands are pipelined on the connection.
            futures = [conn.subscribe("SSUBSCRIBE", chs[i:i + SUBSCRIBE_BATCH])
                       for chs in slots.values() for i in range(0, len(chs), SUBSCRIBE_BATCH)]
            for chs in slots.values():
                for ch in chs:
                    self._where[ch] = name
            await asyncio.gather(*futures)

    async def unsubscribe(self, channels: list[bytes]) -> None:
        by_conn: dict[str, dict[int, list[bytes]]] = {}
        self._desired.difference_update(channels)
        for ch in channels:
            self._orphans.discard(ch)
            name = self._where.pop(ch, None)
            if name is not None:
                by_conn.setdefault(name, {}).setdefault(key_slot(ch), []).append(ch)
        for name, slots in by_conn.items():
            conn = self._conns.get(name)
            if conn is None or conn.closed:
                continue
            futures = [conn.unsubscribe("SUNSUBSCRIBE", chs) for chs in slots.values()]
            with contextlib.suppress(PubSubError):  # a failed connection has nothing subscribed any more
                await asyncio.gather(*futures)

    def _lost(self, conn: PubSubConnection) -> None:
        if self._closing:
            return
        name = next((n for n, c in self._conns.items() if c is conn), None)
        if name is None:
            return
        del self._conns[name]
        lost = [ch for ch, at in self._where.items() if at == name]
        logger.warning("PUB/SUB connection to %s lost (%d channels); moving them", name, len(lost))
        self._on_error("connection_lost")
        self._orphan(lost)

    def _moved(self, conn: PubSubConnection, channel: bytes) -> None:
        if channel in self._where:
            self._orphan([channel])

    def _orphan(self, channels: list[bytes]) -> None:
        for ch in channels:
            self._where.pop(ch, None)
        self._orphans.update(channels)
        if not self._repairing:
            self._repairing = True
            self._spawn(self._repair())

    async def _repair(self) -> None:
        delay = RETRY_DELAY
        try:
            while self._orphans and not self._closing:
                try:
                    await self._cluster.nodes_manager.initialize()
                    self._orphans.intersection_update(self._desired)
                    batch = list(self._orphans)
                    await self._subscribe_at_masters(batch)
                except Exception as e:
                    logger.info("PUB/SUB repair: %s; retrying in %.2fs", e, delay)
                    self._on_error("reconnect_failed")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY)
                    continue
                self._orphans.difference_update(batch)
                logger.info("PUB/SUB: %d channels re-subscribed after a failure", len(batch))
                self._on_resync(batch)
                delay = RETRY_DELAY
        finally:
            self._repairing = False
