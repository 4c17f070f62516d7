"""Map channels on a node: map publish/remove (server API and clients), key expiry, and the subscribe phases
centrifuge-js walks through (STATE pages, STREAM catch-up, then LIVE).

The change stream is the channel's ordinary history stream (publications carry ``key``/``removed``), so live
delivery, offsets and recovery are the node's own; only the state of each key lives here. A state page's
position is read before the state, so whatever changes during paging is in the stream after that position and
the client's catch-up replays it (the SDK applies changes by key: last value wins)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, Final, Generic

from node.broker.base import Broker, PublishDone
from node.broker.postgres_map import PostgresMapBroker
from node.broker.redis import RedisBroker
from node.broker.redis_map import RedisMapStore
from node.config import ChannelOptions
from node.errors import (
    DISCONNECT_BAD_REQUEST,
    ERROR_ALREADY_SUBSCRIBED,
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_LIMIT_EXCEEDED,
    ERROR_PERMISSION_DENIED,
    ERROR_UNRECOVERABLE_POSITION,
    DisconnectError,
    ReplyError,
)
from node.maps import wire
from node.maps.host import C_contra, MapHost
from node.maps.options import MAP_SUBSCRIPTION_TYPES, MapOptions
from node.maps.state import KEY_MODES, UNCONDITIONAL, Conditions
from node.maps.store import MapStore, MemoryMapStore
from node.models import ClientInfo, ClientState, HistoryOptions, PublishOptions, PublishResult, StreamPosition
from node.protocol.codec import Command
from node.protocol.codec import param as _param
from node.tagsfilter import select

# SubscribeRequest.type / phase values of the protocol.
TYPE_STREAM: Final = 0
TYPE_MAP: Final = 1
# The namespace subscription_type each SubscribeRequest.type asks for (2, 3: the presence maps).
TYPE_NAMES: Final = {TYPE_STREAM: "stream", TYPE_MAP: "map", 2: "map_clients", 3: "map_users"}
PHASE_LIVE: Final = 0
PHASE_STREAM: Final = 1
PHASE_STATE: Final = 2
MAX_KEY_LENGTH: Final = 1024

logger = logging.getLogger(__name__)


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ReplyError(ERROR_BAD_REQUEST)


class MapService(Generic[C_contra]):
    """The map channels of one node (``node``: see node/maps/host.py; ``C_contra``: its connection type)."""

    def __init__(self, node: MapHost[C_contra], broker: Broker) -> None:
        self._node = node
        # The state lives next to the channel's stream, in the broker that keeps map channels: in PostgreSQL
        # (the broker is its own store), in Redis, else in this process.
        self.store: MapStore = broker if isinstance(broker, PostgresMapBroker) else \
            RedisMapStore(broker) if isinstance(broker, RedisBroker) else MemoryMapStore(node.publish, node.history,
                                                                          node.publish_then)
        # (namespace, use_delta) -> the namespace, and the fixed options of its API fast path's publications
        # (the namespace object is kept, so a reloaded config, with new objects, never matches an old entry).
        self._fast_options: dict[tuple[int, bool], tuple[ChannelOptions, dict[str, Any]]] = {}
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        interval = self._node.config.map_broker.cleanup_interval
        if interval > 0:
            self._expiry = asyncio.create_task(self._expire_loop(interval))

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
            self._expiry = None
        await self.store.close()

    def options(self, channel: str) -> MapOptions:
        """The channel's map options (map, map_clients or map_users); any other channel is a bad request."""
        return self._namespace(channel).map

    def _namespace(self, channel: str) -> ChannelOptions:
        ns = self._node.policy.namespace(channel)
        if ns.subscription_type not in MAP_SUBSCRIPTION_TYPES:
            raise ReplyError(ERROR_BAD_REQUEST)
        error = ns.map.run_time_error()
        if error:
            # Centrifugo loads such a config and fails each operation on the map in its broker (internal error).
            logger.error("map channel %s: %s", channel, error)
            raise ReplyError(ERROR_INTERNAL)
        return ns

    @staticmethod
    def _stream_options(m: MapOptions, **kw: Any) -> PublishOptions:
        return PublishOptions(history_size=m.effective_stream_size, history_ttl=m.effective_stream_ttl,
                              history_meta_ttl=m.effective_meta_ttl, **kw)

    # --- writes ------------------------------------------------------------------------------------------

    async def publish(self, channel: str, key: str, data: bytes, *, info: ClientInfo | None = None,
                      tags: Mapping[str, str] | None = None, delta: bool = False,
                      conditions: Conditions = UNCONDITIONAL, idempotency_key: str = "") -> PublishResult:
        """Set ``key``. A publish that changes nothing (``conditions`` not met, or ``idempotency_key`` seen within
        ``map_broker.idempotent_result_ttl``) is suppressed with its reason. ``delta`` (or the namespace's
        ``delta_publish``) sends delta subscribers a fossil patch against the key's previous value."""
        ns = self._namespace(channel)
        m = ns.map
        _check_key(key)
        if conditions.key_mode not in KEY_MODES or conditions.version < 0:
            raise ReplyError(ERROR_BAD_REQUEST)
        if conditions.version and not m.recoverable:
            # Centrifugo's map brokers refuse versions without a stream to order them by (an internal error there).
            raise ReplyError(ERROR_INTERNAL)
        opts = self._stream_options(m, client_info=info, tags=tags, key=key, use_delta=delta or ns.delta_publish,
                                    idempotency_key=idempotency_key,
                                    idempotent_result_ttl=self._node.config.map_broker.idempotent_result_ttl)
        result = await self.store.set(channel, data, opts, m.key_ttl, conditions)
        if not result.suppressed:
            self._node.metrics.published("publication")
        return result

    def publish_then(self, channel: str, key: str, data: bytes, tags: Mapping[str, str] | None, delta: bool,
                     done: PublishDone) -> None:
        """``publish`` of an unconditional write without client info or idempotency key (the server API's fast
        path): the same checks, then the store answers ``done`` from a callback, or at once, without a task."""
        try:
            ns = self._namespace(channel)
            _check_key(key)
            use_delta = delta or ns.delta_publish
            cached = self._fast_options.get((id(ns), use_delta))
            if cached is None or cached[0] is not ns:
                m = ns.map
                fixed = {"history_size": m.effective_stream_size, "history_ttl": m.effective_stream_ttl,
                         "history_meta_ttl": m.effective_meta_ttl, "use_delta": use_delta,
                         "idempotent_result_ttl": self._node.config.map_broker.idempotent_result_ttl}
                cached = self._fast_options[(id(ns), use_delta)] = (ns, fixed)
            opts = PublishOptions(**cached[1], tags=tags, key=key)
        except Exception as e:  # a ReplyError, or a failure that is the caller's internal error
            done(e)
            return

        def stored(outcome: PublishResult | BaseException) -> None:
            if isinstance(outcome, BaseException):
                done(outcome)
                return
            if not outcome.suppressed:
                self._node.metrics.published("publication")
            done(outcome)

        self.store.set_then(channel, data, opts, ns.map.key_ttl, stored)

    async def remove(self, channel: str, key: str, *, info: ClientInfo | None = None, expired_only: bool = False,
                     idempotency_key: str = "", tags: Mapping[str, str] | None = None) -> PublishResult:
        """Remove ``key``; removing a key that is not there changes nothing and announces nothing (suppressed,
        "key_not_found"). The removal carries the entry's tags, or ``tags`` (a remove proxy's) when given."""
        m = self.options(channel)
        _check_key(key)
        opts = self._stream_options(m, client_info=info, key=key, removed=True, idempotency_key=idempotency_key,
                                    tags=tags,
                                    idempotent_result_ttl=self._node.config.map_broker.idempotent_result_ttl)
        return await self.store.remove(channel, opts, expired_only=expired_only)

    # --- reads and administration (server API) ------------------------------------------------------------

    async def read_state(self, channel: str, cursor: str, limit: int) -> wire.MapRead:
        """A page of the state with the stream position read before it."""
        m = self.options(channel)
        top = (await self._node.history(channel, HistoryOptions(limit=0,
                                                                history_meta_ttl=m.effective_meta_ttl))).position
        entries, next_cursor = await self.store.page(channel, cursor, m.page_size(limit))
        return wire.state_read(top, entries, next_cursor)

    async def read_stream(self, channel: str, since: StreamPosition | None, limit: int,
                          reverse: bool) -> wire.MapRead:
        m = self.options(channel)
        result = await self._node.history(channel, HistoryOptions(since=since, limit=limit, reverse=reverse,
                                                                  history_meta_ttl=m.effective_meta_ttl))
        return wire.MapRead(result.publications, result.position)

    async def stats(self, channel: str) -> int:
        self.options(channel)
        return await self.store.count(channel)

    async def clear(self, channel: str) -> None:
        self.options(channel)
        await self.store.clear(channel)
        await self._node.remove_history(channel)

    async def unsubscribed(self, client_id: str, channel: str) -> None:
        """A subscriber left: with ``map.remove_client_on_unsubscribe`` its own entry (key = client id) goes."""
        try:
            ns = self._node.policy.namespace(channel)
        except ReplyError:
            return  # its namespace went away in a config reload: no map options to follow
        if ns.subscription_type == "map" and ns.map.remove_client_on_unsubscribe:
            await self.remove(channel, client_id)

    async def _expire_loop(self, interval: float) -> None:
        batch = self._node.config.map_broker.cleanup_batch_size
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await self.store.expired(batch)
                for channel, key in expired:
                    # An expired key reaches subscribers as a removal, like one removed by the application.
                    await self.remove(channel, key, expired_only=True)
            except Exception as e:  # the engine is unavailable, or the namespace is no longer a map (reload)
                logger.warning("expiring map keys: %s", e)

    # --- client commands ---------------------------------------------------------------------------------

    async def client_publish(self, client: C_contra, cmd: Command) -> bytes:
        params = cmd.params
        channel = _param(params, "channel", str, "")
        if not channel:
            raise DisconnectError(DISCONNECT_BAD_REQUEST)
        removed = _param(params, "removed", bool, False)
        # Permission first: a namespace that is not a map allows no map writes (103, as Centrifugo answers).
        self._node.policy.check_map_write(client, channel, remove=removed)
        m = self.options(channel)
        key = _param(params, "key", str, "")
        if m.client_key:
            # The server picks the key; an anonymous client has no user id to be keyed by (Centrifugo: 103).
            key = client.id if m.client_key == "client_id" else client.user
            if not key:
                raise ReplyError(ERROR_PERMISSION_DENIED)
        info = client.channel_info(channel)
        if removed:
            await self.remove(channel, key, info=info)
        else:
            if cmd.data is None:
                raise DisconnectError(DISCONNECT_BAD_REQUEST)
            await self.publish(channel, key, cmd.data, info=info)
        return client.codec.empty

    async def subscribe(self, client: C_contra, cmd: Command) -> bytes | None:
        node, params = self._node, cmd.params
        channel = _param(params, "channel", str, "")
        if not channel:
            raise DisconnectError(DISCONNECT_BAD_REQUEST)
        kind = _param(params, "type", int, TYPE_STREAM)
        phase = _param(params, "phase", int, PHASE_LIVE)
        # The subscription's type must be its namespace's (Centrifugo answers 103 otherwise).
        if TYPE_NAMES.get(kind) != node.policy.namespace(channel).subscription_type:
            raise ReplyError(ERROR_PERMISSION_DENIED)
        ns = self._namespace(channel)
        m = ns.map
        # Fossil delta per key, negotiated as for streams; the pages then carry JSON values as JSON strings (the
        # SDK keeps their exact bytes as each key's delta base), and recovered values come in full.
        delta = params.get("delta") == "fossil" and "fossil" in ns.allowed_delta_types
        if phase not in (PHASE_STATE, PHASE_STREAM):
            raise ReplyError(ERROR_BAD_REQUEST)
        if channel in client.channels or channel in client.subscribing:
            raise ReplyError(ERROR_ALREADY_SUBSCRIBED)
        if len(client.channels) + len(client.subscribing) >= node.config.client.channel_limit:
            raise ReplyError(ERROR_LIMIT_EXCEEDED)
        # The live reply recovers at most a page: within what a recovery may return.
        limit = min(m.page_size(_param(params, "limit", int, 0)),
                    node.config.client.recovery_max_publication_limit or m.max_page_size)
        opts = await node.policy.subscribe(client, channel, params)
        meta_ttl = m.effective_meta_ttl
        top = (await node.history(channel, HistoryOptions(limit=0, history_meta_ttl=meta_ttl))).position
        offset = _param(params, "offset", int, 0)
        epoch = _param(params, "epoch", str, "")
        if phase == PHASE_STATE:
            # The first page freezes the position; the following ones carry it back.
            position = StreamPosition(offset, epoch) if epoch else top
            entries, cursor = await self.store.page(channel, _param(params, "cursor", str, ""), limit)
            # The SDK sends its filter with every phase.
            shown = select(opts.tags_filter, entries, lambda entry: entry[1].tags)
            # A changed epoch tells the SDK to start over from the first page.
            return wire.state_page(client.protocol, top.epoch, position.offset, shown, cursor, delta=delta)
        since = StreamPosition(offset, epoch)
        if epoch != top.epoch or offset > top.offset:
            raise ReplyError(ERROR_UNRECOVERABLE_POSITION)
        page = await node.history(channel, HistoryOptions(since=since, limit=limit + 1,
                                                                        history_meta_ttl=meta_ttl))
        if len(page.publications) > limit:
            pubs = page.publications[:limit]
            # The page's offset is its last change's, shown or not: the next page continues after it.
            return wire.stream_page(client.protocol, top.epoch, pubs[-1].offset,
                                    select(opts.tags_filter, pubs, lambda p: p.tags), delta=delta)
        await self._go_live(client, cmd, channel, m, dataclasses.replace(opts, delta=delta), since)
        return None  # already replied

    async def _go_live(self, client: C_contra, cmd: Command, channel: str, m: MapOptions, opts: Any,
                       since: StreamPosition) -> None:
        node = self._node
        recovering = cmd.params.get("recover") is True
        # Always positioned and recovering from the client's position internally: that is the hand-over from
        # the pages to live delivery without a gap. What the client is told follows the map's mode.
        live = dataclasses.replace(opts, enable_positioning=True, enable_recovery=True, recovery_mode_cache=False,
                                   history_meta_ttl=m.effective_meta_ttl)
        client.start_subscribing(channel)
        try:
            start = await node.subscribe_client(client, channel, live, server_side=False, since=since,
                                                reject_unrecovered=True)
        finally:
            client.done_subscribing(channel)
        if start is None or client.state is ClientState.CLOSED:
            return None
        shown = dataclasses.replace(live, enable_recovery=m.recoverable)
        told = dataclasses.replace(start, reply_offset=start.top.offset, recovered=recovering and start.recovered,
                                   was_recovering=recovering)
        ttl = max(int(opts.expire_at - time.time()), 0) if opts.expire_at else 0
        client.enqueue(client.codec.reply(cmd.id, "subscribe", client.codec.subscribe_result(shown, told, ttl)))
        node.start_delivery(client, channel, start)
        await node.after_subscribe(client, channel, live)
        return None
