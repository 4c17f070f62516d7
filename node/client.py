"""One connection: protocol state machine, one timer for ping/pong/expiry/presence, and the outgoing queue.

Command logic lives in ``commands.py``; this module only dispatches. Outgoing frames are queued with the
synchronous ``enqueue_framed`` (called by the hub's fan-out) and flushed once per event-loop tick in one
transport write; a client whose unsent bytes pass ``client.queue_max_size`` is disconnected with
3008 "slow" instead of being buffered without bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Coroutine, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Final

from node import commands
from node.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_CONNECTION_CLOSED,
    DISCONNECT_EXPIRED,
    DISCONNECT_INSUFFICIENT_STATE,
    DISCONNECT_NO_PONG,
    DISCONNECT_SLOW,
    DISCONNECT_STALE,
    DISCONNECT_SUB_EXPIRED,
    DISCONNECT_WRITE_ERROR,
    ERROR_INTERNAL,
    UNSUBSCRIBE_EXPIRED,
    UNSUBSCRIBE_INSUFFICIENT_STATE,
    Disconnect,
    DisconnectError,
    ReplyError,
    Unsubscribe,
)
from node.models import ClientInfo, ClientState, RequestInfo
from node.node import Node
from node.protocol import codec, proto
from node.protocol.codec import Codec
from node.proxy import hooks
from node.proxy.types import RefreshResult, SubRefreshResult
from node.subscriptions import ChannelState
from node.transport import Transport

logger = logging.getLogger(__name__)

# The commands Centrifugo runs concurrently with client.concurrency (its handler's concurrent event handlers);
# connect, unsubscribe and send stay in order with the reading.
CONCURRENT_METHODS: Final = frozenset({"subscribe", "publish", "presence", "presence_stats", "history", "rpc",
                                       "refresh", "sub_refresh"})

_NONE: Final[frozenset[str]] = frozenset()


class Client:
    __slots__ = (
        "_close_task",
        "_closing",
        "_connect_failed",
        "_flush_scheduled",
        "_info",
        "_loop",
        "_next_ping",
        "_next_tick",
        "_out",
        "_out_size",
        "_ping_sent",
        "_pong_deadline",
        "_positions_checked",
        "_queue_max",
        "_refreshing",
        "_slots",
        "_stale_deadline",
        "_stalled_since",
        "_tasks",
        "app_name",
        "app_version",
        "channels",
        "codec",
        "conn_info",
        "connected_at",
        "emulated_headers",
        "expire_at",
        "frame",
        "framing",
        "id",
        "meta",
        "node",
        "protocol",
        "proxy_headers",
        "state",
        "subscribing",
        "timer_slot",
        "transport",
        "unidirectional",
        "user",
    )

    def __init__(self, node: Node, transport: Transport, request: RequestInfo) -> None:
        self.node = node
        self.transport = transport
        self.protocol = transport.protocol  # "json" | "protobuf": how commands arrive and messages leave
        self.codec: Codec = proto.CODECS[self.protocol]  # builds every message this client is sent
        # The request itself is not kept (nothing needs it after the upgrade; memory per connection counts).
        self.unidirectional = transport.unidirectional
        self.framing = transport.framing
        self.frame = transport.frame  # message -> wire bytes for this client's transport
        self.id = str(uuid.uuid4())
        self.user = ""
        self.conn_info: bytes | None = None
        self.meta: bytes | None = None  # connection meta (never sent to the client; proxies and the API see it)
        # The request headers some proxy forwards (http_headers / grpc_metadata); None in the common case.
        self.proxy_headers: Mapping[str, str] | None = node.proxies.pick_headers(request.headers)
        # The headers the client sent in its connect command (headers emulation) that some proxy forwards.
        self.emulated_headers: Mapping[str, str] | None = None
        self._refreshing = False
        self.app_name = ""
        self.app_version = ""
        self.connected_at = 0.0
        self._info: ClientInfo | None = None
        self.expire_at = 0
        self.state = ClientState.CONNECTING
        self.channels: dict[str, ChannelState] = {}
        # Both sets are created on first use: most connections never need them, and an empty set is 216 bytes.
        self.subscribing: AbstractSet[str] = _NONE
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []  # framed bytes, reused across ticks
        self._out_size = 0
        self._stalled_since = 0.0  # loop time since which the socket has not drained (0 = it has)
        self._flush_scheduled = False
        # Read on every delivery: kept here rather than looked up through node.config each time.
        self._queue_max = node.config.client.queue_max_size
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        # client.concurrency > 1: commands that may run side by side take a slot each (None: one at a time).
        concurrency = node.config.client.concurrency
        self._slots = asyncio.Semaphore(concurrency) if concurrency > 1 else None
        self._tasks: set[asyncio.Task[None]] | None = None
        self._connect_failed = False
        self._positions_checked = time.time()
        now = self._loop.time()
        self._stale_deadline = now + node.config.client.stale_close_delay
        self._next_ping = 0.0
        self._pong_deadline = 0.0
        self._ping_sent = 0.0
        self._next_tick = 0.0
        self.timer_slot = 0  # the node's TimerWheel slot this client waits for (0 = none)
        self._schedule_timer()

    @property
    def info(self) -> ClientInfo:
        info = self._info
        if info is None or info.user != self.user or info.conn_info is not self.conn_info:
            info = self._info = ClientInfo(client=self.id, user=self.user, conn_info=self.conn_info)
        return info

    def channel_info(self, channel: str) -> ClientInfo:
        state = self.channels.get(channel)
        return state.info if state is not None else self.info

    # --- inbound ---------------------------------------------------------------------------------------

    async def handle_data(self, data: bytes | str) -> bool:
        """Process one inbound frame; False means the connection is closing and reading should stop."""
        if self.state is ClientState.CLOSED:
            return False
        try:
            cmds = proto.decode_frame(data) if self.protocol == "protobuf" else codec.decode_frame(data)
        except codec.DecodeError as e:
            logger.info("client %s sent a malformed frame: %s", self.id, e)
            await self.close(DISCONNECT_BAD_REQUEST)
            return False
        for cmd in cmds:
            if self._slots is not None and cmd.method in CONCURRENT_METHODS and self.state is ClientState.CONNECTED:
                await self._dispatch_concurrently(cmd)
            elif not await self._dispatch(cmd):
                return False
        return not self._closing

    async def _dispatch_concurrently(self, cmd: codec.Command) -> None:
        """``client.concurrency``: the command runs in a task of its own, at most that many at a time (reading
        waits for a free slot); each reply is written when its command finishes, as Centrifugo does."""
        slots = self._slots
        assert slots is not None
        await slots.acquire()

        async def run() -> None:
            try:
                await self._dispatch(cmd)
            finally:
                slots.release()

        self.spawn(run())

    async def _dispatch(self, cmd: codec.Command) -> bool:
        if self.state is ClientState.CLOSED:
            return False
        if cmd.id == 0 and cmd.method != "send":
            if self.state is ClientState.CONNECTED:
                return await self._handle_pong()
            # Before connect an id-less command is no pong: centrifuge closes with 3501 (a connect without id too).
            await self.close(DISCONNECT_BAD_REQUEST)
            return False
        if cmd.method in ("", "?") or self._connect_failed:
            await self.close(DISCONNECT_BAD_REQUEST)
            return False
        if (self.state is ClientState.CONNECTING) != (cmd.method == "connect"):
            await self.close(DISCONNECT_BAD_REQUEST)
            return False
        handler = commands.HANDLERS.get(cmd.method)
        if handler is None:
            await self.close(DISCONNECT_BAD_REQUEST)
            return False
        started = time.perf_counter()
        try:
            result = await handler(self, cmd)
            if result is not None and cmd.id:
                self.enqueue(self.codec.reply(cmd.id, cmd.method, result))
        except ReplyError as e:
            self.node.metrics.reply_error(cmd.method, e.error.code)
            if cmd.method == "connect":
                self._connect_failed = True
            if cmd.id:
                self.enqueue(self.codec.error_reply(cmd.id, e.error))
        except DisconnectError as e:
            await self.close(e.disconnect)
            return False
        except Exception:
            # An engine failure (Redis unreachable, say) is a temporary error: the SDK retries the command (or
            # reconnects after a failed connect) while the connection and its other subscriptions stay.
            logger.exception("client %s: %s command failed", self.id, cmd.method)
            self.node.metrics.reply_error(cmd.method, ERROR_INTERNAL.code)
            if cmd.method == "connect":
                self._connect_failed = True
            if cmd.id:
                self.enqueue(self.codec.error_reply(cmd.id, ERROR_INTERNAL))
        finally:
            self.node.metrics.command_duration(cmd.method, time.perf_counter() - started)
        return not self._closing

    async def _handle_pong(self) -> bool:
        if not self._pong_deadline:
            # No ping is outstanding: protocol violation (centrifuge answers 3501 as well).
            if self.node.config.client.pong_timeout <= 0:
                return True
            await self.close(DISCONNECT_BAD_REQUEST)
            return False
        self._pong_deadline = 0.0
        self.node.metrics.ping_pong(self.transport.name, self._loop.time() - self._ping_sent)
        return True

    # --- lifecycle hooks used by commands ---------------------------------------------------------------

    def mark_connected(self) -> None:
        self.state = ClientState.CONNECTED
        cfg = self.node.config.client
        now = self._loop.time()
        # The first ping lands in [interval/2, interval) so that a reconnect storm does not ping in lockstep.
        self._next_ping = now + cfg.ping_interval * (0.5 + random.random() / 2)
        self._next_tick = now + cfg.presence_update_interval
        self._schedule_timer()

    def set_expire_at(self, expire_at: int) -> None:
        self.expire_at = expire_at
        self._schedule_timer()

    # --- outbound --------------------------------------------------------------------------------------

    def enqueue(self, message: bytes) -> None:
        """Queue one protocol message (framed here, for this client's transport)."""
        self.enqueue_framed(self.frame(message))

    def enqueue_framed(self, frame: bytes) -> None:
        """Queue bytes already framed for this client's ``framing``; O(1), never awaits. Flushed once per tick."""
        if self._closing:
            return
        self._out.append(frame)
        self._out_size += len(frame)
        if self._out_size > self._queue_max:
            self.schedule_close(DISCONNECT_SLOW)
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.node.flusher.add(self)

    def flush(self) -> None:
        """Write what was queued during this tick (called by the node's Flusher)."""
        self._flush_scheduled = False
        out = self._out
        if not out or self.transport.closed:
            return
        size = self._out_size
        self._out_size = 0
        buffered = self.transport.buffered()
        if buffered + size > self._queue_max:
            self._out = []
            self.schedule_close(DISCONNECT_SLOW)
            return
        if buffered:
            if self._write_stalled():
                self._out = []
                self.schedule_close(DISCONNECT_WRITE_ERROR)
                return
        elif self._stalled_since:
            self._stalled_since = 0.0
        # One write per tick: a lone frame goes out as the shared bytes object itself (no copy); several are
        # joined. The list is reused, so a flush allocates nothing in the common case.
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def write_failed(self) -> None:
        """The transport refused a write: drop what is queued (closing would try to write it again) and close."""
        self._out = []
        self._out_size = 0
        self.schedule_close(DISCONNECT_WRITE_ERROR)

    def _write_stalled(self) -> bool:
        """Centrifugo's ``websocket.write_timeout``: a write that cannot complete in time ends the connection.
        Writes here never block, so the equivalent is a socket that has not taken all of our bytes for that long
        (checked whenever more arrive; a client that only reads slowly is cut by the queue size instead)."""
        timeout = self.node.config.websocket.write_timeout
        if timeout <= 0 or self.transport.name not in ("websocket", "uni_websocket"):
            return False
        now = self._loop.time()
        if not self._stalled_since:
            self._stalled_since = now
            return False
        return now - self._stalled_since > timeout

    # --- timers ----------------------------------------------------------------------------------------

    def _schedule_timer(self) -> None:
        if self._closing:
            return
        deadlines = []
        if self.state is ClientState.CONNECTING:
            deadlines.append(self._stale_deadline)
        else:
            deadlines.append(self._next_ping)
            deadlines.append(self._next_tick)
            if self._pong_deadline:
                deadlines.append(self._pong_deadline)
            if self.expire_at and not self._refreshing:
                deadlines.append(self._expire_deadline())
        # The wheel keeps an earlier wake-up if one is set; on_timer schedules the next one.
        self.node.timers.schedule(self, min(deadlines))

    def _close_delay(self) -> float:
        # A connection the server refreshes (refresh proxy) is refreshed at expiry, with no grace for the client.
        return 0.0 if self.node.proxies.refresh is not None else self.node.config.client.expired_close_delay

    def _expire_deadline(self) -> float:
        delay = self.expire_at - time.time() + self._close_delay()
        return self._loop.time() + max(delay, 0.0)

    def on_timer(self) -> None:
        if self._closing:
            return
        now = self._loop.time()
        cfg = self.node.config.client
        if self.state is ClientState.CONNECTING:
            if now >= self._stale_deadline:
                self.schedule_close(DISCONNECT_STALE)
                return
        else:
            if self._pong_deadline and now >= self._pong_deadline:
                self.schedule_close(DISCONNECT_NO_PONG)
                return
            if self.expire_at and not self._refreshing and time.time() >= self.expire_at + self._close_delay():
                if self.node.proxies.refresh is None:
                    self.schedule_close(DISCONNECT_EXPIRED)
                    return
                self._refreshing = True
                self.spawn(self._server_refresh())
            if now >= self._next_ping:
                self.enqueue(self.codec.ping)
                self._ping_sent = now
                self._next_ping = now + cfg.ping_interval
                if cfg.pong_timeout > 0 and not self.unidirectional and not self._pong_deadline:
                    self._pong_deadline = now + cfg.pong_timeout
            if now >= self._next_tick:
                self._next_tick = now + cfg.presence_update_interval
                self.spawn(self._periodic())
        self._schedule_timer()

    async def _server_refresh(self) -> None:
        """Ask the refresh proxy whether the expiring connection lives on (Centrifugo's server-side refresh)."""
        proxy = self.node.proxies.refresh
        assert proxy is not None
        try:
            result = await hooks.refresh(self, proxy)
        except DisconnectError as e:
            await self.close(e.disconnect)
            return
        except ReplyError:
            result = RefreshResult(expired=True)
        finally:
            self._refreshing = False
        if result.expired or (result.expire_at and result.expire_at <= time.time()):
            await self.close(DISCONNECT_EXPIRED)
            return
        if result.info is not None:
            self.conn_info = result.info
        if result.meta is not None:
            self.meta = result.meta
        self.set_expire_at(result.expire_at)

    async def _periodic(self) -> None:
        """Every presence_update_interval: refresh presence entries, expire lapsed subscriptions and, every
        channel_position_check_delay, compare positioned subscriptions with the stream top."""
        now = time.time()
        cfg = self.node.config.client
        check_positions = now - self._positions_checked >= cfg.channel_position_check_delay
        if check_positions:
            self._positions_checked = now
        for channel, state in list(self.channels.items()):
            if state.expire_at and now >= state.expire_at and await self._sub_refreshed(channel, state):
                continue
            if state.expire_at and now >= state.expire_at + cfg.expired_sub_close_delay:
                if state.server_side:
                    await self.close(DISCONNECT_SUB_EXPIRED)
                    return
                await self.unsubscribe(channel, UNSUBSCRIBE_EXPIRED)
                continue
            if state.opts.emit_presence:
                await self.node.add_presence(channel, self.id, state.info)
            await self.node.map_presence.present(self, channel, state.info)
            if check_positions and state.opts.enable_positioning and not await self.node.position_valid(self, channel):
                self.insufficient_state(channel)

    async def _sub_refreshed(self, channel: str, state: ChannelState) -> bool:
        """With a sub_refresh proxy for the channel's namespace, the server prolongs an expired subscription
        (True); without one, or when the backend says it expired, it runs out as usual."""
        proxy = self.node.proxies.for_channel("sub_refresh", self.node.policy.namespace(channel))
        if proxy is None:
            return False
        try:
            result = await hooks.sub_refresh(self, proxy, channel)
        except (ReplyError, DisconnectError):
            result = SubRefreshResult(expired=True)
        if result.expired or (result.expire_at and result.expire_at <= time.time()):
            state.expire_at = 1  # long past: unsubscribed below without further grace
            return False
        state.expire_at = result.expire_at
        if result.info is not None:
            state.info = ClientInfo(client=self.id, user=self.user, conn_info=self.conn_info, chan_info=result.info)
        return True

    # --- server-side actions ---------------------------------------------------------------------------

    async def unsubscribe(self, channel: str, unsub: Unsubscribe) -> None:
        """Unsubscribe from the server side and tell the client with an unsubscribe push."""
        if channel not in self.channels:
            return
        await self.node.remove_subscription(self, channel, unsub)
        codec_ = self.codec
        self.enqueue(codec_.push(codec_.push_unsubscribe(channel, unsub.code, unsub.reason), self.unidirectional))

    def start_subscribing(self, channel: str) -> None:
        """Mark a subscription in flight (a second subscribe to it is refused with 105)."""
        if not isinstance(self.subscribing, set):
            self.subscribing = set()
        self.subscribing.add(channel)

    def done_subscribing(self, channel: str) -> None:
        if isinstance(self.subscribing, set):
            self.subscribing.discard(channel)
            if not self.subscribing:
                self.subscribing = _NONE

    def insufficient_state(self, channel: str) -> None:
        """The client missed publications of a positioned channel (a gap or a new epoch): a client-side
        subscription is unsubscribed with 2500 (the SDK resubscribes and recovers); a server-side one, which the
        SDK cannot resubscribe, disconnects with 3010."""
        state = self.channels.get(channel)
        if state is None:
            return
        if state.server_side:
            self.schedule_close(DISCONNECT_INSUFFICIENT_STATE)
        else:
            self.spawn(self.unsubscribe(channel, UNSUBSCRIBE_INSUFFICIENT_STATE))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine owned by this client; it is cancelled if the client closes first."""
        task: asyncio.Task[None] = self._loop.create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("client %s: background task failed", self.id, exc_info=task.exception())

    def schedule_close(self, disconnect: Disconnect) -> None:
        """Close from synchronous code (timers, the fan-out path)."""
        if self._closing or self._close_task is not None:
            return
        self._close_task = self._loop.create_task(self.close(disconnect))

    async def wait_closed(self) -> None:
        """Wait for a close scheduled from synchronous code (``schedule_close``) to finish."""
        task = self._close_task
        if task is not None and task is not asyncio.current_task():
            await asyncio.shield(task)

    async def close(self, disconnect: Disconnect) -> None:
        """Idempotent. Flushes what is queued, leaves every channel, then closes the transport."""
        if self._closing:
            return
        self._closing = True
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("client %s closing: %d %s", self.id, disconnect.code, disconnect.reason)
        self.node.timers.cancel(self)
        was_slow = disconnect is DISCONNECT_SLOW
        if not was_slow and self._out and not self.transport.closed:
            self._flush_now()
        connected = self.state is ClientState.CONNECTED
        self.state = ClientState.CLOSED
        current = asyncio.current_task()
        tasks = [task for task in self._tasks or () if task is not current]
        for task in tasks:
            task.cancel()
        if connected:
            await self.node.remove_client(self, disconnect)
        if disconnect is not DISCONNECT_CONNECTION_CLOSED:
            self.node.metrics.disconnect(disconnect.code)
        await self.transport.close(disconnect)
        if tasks:  # the client's own tasks end before it does
            await asyncio.gather(*tasks, return_exceptions=True)

    def _flush_now(self) -> None:
        self._out_size = 0
        out, self._out = self._out, []
        self.transport.write(b"".join(out))
