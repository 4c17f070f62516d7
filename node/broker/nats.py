"""The NATS broker: PUB/SUB between nodes over core NATS (at most once), as Centrifugo's ``broker.type: nats``.

Subjects follow Centrifugo's: ``<prefix>.client.<channel>`` for channel messages, ``<prefix>.control`` for
control messages to every node and ``<prefix>.node.<id>`` for one node. In raw mode a channel maps onto the
subject ``raw_mode.prefix + channel`` (after ``channel_replacements``) and payloads travel unwrapped, so any
NATS publisher can feed Centrifugo channels. With ``allow_wildcards`` a channel containing ``*`` or ``>`` is a
NATS wildcard subscription.

History lives in JetStream only when ``broker.nats.jetstream`` (Fugato-only) is on (see ``nats_jetstream``);
otherwise history reads answer 108 "not available", as Centrifugo's NATS broker does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import Final

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from node import models
from node.broker import wire
from node.broker.base import Broker, BrokerEventHandler
from node.broker.nats_jetstream import JetStreamHistory
from node.broker.tls import client_context
from node.config_engine import NatsBrokerConfig
from node.errors import ERROR_BAD_REQUEST, ERROR_NOT_AVAILABLE, ReplyError

logger = logging.getLogger(__name__)

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
# How long to wait between reconnect attempts: short, so delivery resumes soon after nats-server is back.
RECONNECT_WAIT: Final = 0.5


def _has_wildcard(channel: str) -> bool:
    return "*" in channel or ">" in channel


class NatsBroker(Broker):
    def __init__(self, cfg: NatsBrokerConfig, *, node_id: str, history_limits: tuple[int, float] = (0, 0.0),
                 history_meta_ttl: float = 0.0) -> None:
        self._cfg = cfg
        self._node_id = node_id
        self._client_prefix = f"{cfg.prefix}.client."
        self._control = f"{cfg.prefix}.control"
        self._raw = cfg.raw_mode
        self.nc = NatsClient()
        self._handler: BrokerEventHandler | None = None
        self._subs: dict[str, Subscription] = {}  # channel → its subscription
        self._tasks: set[asyncio.Task[None]] = set()
        self.history_store: JetStreamHistory | None = None
        if cfg.jetstream.enabled:
            self.history_store = JetStreamHistory(self.nc, cfg, history_limits, history_meta_ttl)

    # --- subjects ----------------------------------------------------------------------------------------

    def subject(self, channel: str) -> str:
        if self._raw.enabled:
            for old, new in self._raw.channel_replacements.items():
                channel = channel.replace(old, new)
            return self._raw.prefix + channel
        return self._client_prefix + channel

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        url = self._cfg.url or DEFAULT_URL
        # nats-py retries the first connect forever when reconnects are unlimited; like Centrifugo, a node
        # whose NATS is unreachable at start stops with an error instead.
        try:
            await asyncio.wait_for(self._connect(url), max(5 * self._cfg.dial_timeout, 2.0))
        except TimeoutError:
            await self.nc.close()
            raise ConnectionError(f"NATS broker: cannot connect to {url}") from None
        on_control = self._on_control
        await self.nc.subscribe(self._control, cb=on_control)
        await self.nc.subscribe(f"{self._cfg.prefix}.node.{self._node_id}", cb=on_control)
        if self.history_store is not None:
            await self.history_store.start()
        logger.info("NATS broker connected to %s", url)

    async def _connect(self, url: str) -> None:
        await self.nc.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            connect_timeout=self._cfg.dial_timeout,  # type: ignore[arg-type]
            flush_timeout=self._cfg.write_timeout,
            reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
            # No buffering while disconnected (Centrifugo: ReconnectBufSize(-1)): a publish fails at once
            # instead of being reported as a success and lost.
            pending_size=0,
            tls=client_context(self._cfg.tls),
            name=f"fugato {self._node_id}",
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if not self.nc.is_closed:
            await self.nc.close()

    def healthy(self) -> bool:
        return self.nc.is_connected

    async def _disconnected(self) -> None:
        logger.warning("NATS broker: connection lost")
        if self._handler is not None:
            self._handler.handle_pubsub_error("connection_lost")

    async def _reconnected(self) -> None:
        logger.info("NATS broker: reconnected")
        # Not awaited here: nats-py finishes its reconnect only after this callback returns.
        task = asyncio.get_running_loop().create_task(self._resync())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self) -> None:
        # nats-py has re-sent every SUB; publications sent meanwhile never reached us, so positioned
        # subscribers are checked against the stream (JetStream mode) and sent through recovery if behind.
        if self.history_store is not None:
            try:
                await self.history_store.restore()
            except Exception as e:  # publishes and reads answer errors until a later reconnect restores it
                logger.warning("NATS broker: JetStream not restored after reconnecting: %s", e)
        if self._handler is not None:
            self._handler.handle_resubscribed(list(self._subs))

    async def _error(self, e: Exception) -> None:
        logger.info("NATS broker: %s", e or type(e).__name__)

    # --- PUB/SUB -----------------------------------------------------------------------------------------

    async def subscribe(self, *channels: str) -> None:
        for channel in channels:
            if channel in self._subs:
                continue
            if _has_wildcard(channel) and not self._cfg.allow_wildcards:
                raise ReplyError(ERROR_BAD_REQUEST)
            cb = functools.partial(self._on_raw if self._raw.enabled else self._on_message, channel)
            self._subs[channel] = await self.nc.subscribe(self.subject(channel), cb=cb)
        # A round trip, so nats-server has the subscriptions before the client is told it is subscribed.
        await self.nc.flush(self._cfg.write_timeout)  # type: ignore[arg-type]

    async def unsubscribe(self, *channels: str) -> None:
        for channel in channels:
            sub = self._subs.pop(channel, None)
            if sub is not None:
                await sub.unsubscribe()

    async def _on_control(self, msg: Msg) -> None:
        if self._handler is not None:
            self._handler.handle_control(msg.data)

    def _specific(self, channel: str, msg: Msg) -> str:
        """For a wildcard subscription, the concrete channel a message was published to (else "")."""
        if not _has_wildcard(channel):
            return ""
        return msg.subject.removeprefix(self._raw.prefix if self._raw.enabled else self._client_prefix)

    async def _on_raw(self, channel: str, msg: Msg) -> None:
        if self._handler is not None:
            pub = models.Publication(data=msg.data, channel=self._specific(channel, msg))
            self._handler.handle_publication(channel, pub, models.StreamPosition())

    async def _on_message(self, channel: str, msg: Msg) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            decoded = wire.decode(msg.data)
        except wire.WireError as e:
            logger.warning("dropping a message on %s: %s", msg.subject, e)
            return
        if decoded.kind == wire.PUB and decoded.publication is not None:
            pub = decoded.publication
            specific = self._specific(channel, msg)
            if specific:
                pub = dataclasses.replace(pub, channel=specific)
            handler.handle_publication(channel, pub, decoded.position)
        elif decoded.info is not None:
            if decoded.kind == wire.JOIN:
                handler.handle_join(channel, decoded.info)
            else:
                handler.handle_leave(channel, decoded.info)

    # --- publishing --------------------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, opts: models.PublishOptions) -> models.PublishResult:
        if _has_wildcard(channel):
            raise ReplyError(ERROR_BAD_REQUEST)  # a publication goes to one channel, never to a pattern
        if self._raw.enabled:
            await self.nc.publish(self.subject(channel), data)
            return models.PublishResult(models.StreamPosition())
        body = wire.encode_body(data, opts.client_info, opts.tags, int(time.time() * 1000))
        if self.history_store is not None and opts.history_size > 0 and opts.history_ttl > 0:
            return await self.history_store.publish(channel, body, opts)
        await self.nc.publish(self.subject(channel), wire.encode_publication_message(body))
        return models.PublishResult(models.StreamPosition())

    async def _publish_join_leave(self, kind: int, channel: str, info: models.ClientInfo) -> None:
        if not self._raw.enabled:  # raw subjects carry only payloads
            await self.nc.publish(self.subject(channel), wire.encode_join_leave(kind, info))

    async def publish_join(self, channel: str, info: models.ClientInfo) -> None:
        await self._publish_join_leave(wire.JOIN, channel, info)

    async def publish_leave(self, channel: str, info: models.ClientInfo) -> None:
        await self._publish_join_leave(wire.LEAVE, channel, info)

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        await self.nc.publish(f"{self._cfg.prefix}.node.{node_id}" if node_id else self._control, data)

    # --- history -----------------------------------------------------------------------------------------

    async def history(self, channel: str, opts: models.HistoryOptions) -> models.HistoryResult:
        if self.history_store is None:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        return await self.history_store.history(channel, opts)

    async def remove_history(self, channel: str) -> None:
        if self.history_store is None:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        await self.history_store.remove(channel)
