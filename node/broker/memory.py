"""The memory engine: a single-node Broker with per-channel history streams, and an in-process presence map."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from node.broker.base import Broker, BrokerEventHandler, PresenceManager, PublishDone, new_epoch
from node.models import (
    ClientInfo,
    HistoryOptions,
    HistoryResult,
    PresenceStats,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
)

# How often expired streams and idempotency results are dropped. Reads check expiry themselves, so this
# only bounds memory held by channels nobody touches any more.
SWEEP_INTERVAL: Final = 30.0
DEFAULT_META_TTL: Final = 720 * 3600.0
DEFAULT_PRESENCE_TTL: Final = 60.0


@dataclass(slots=True)
class _Stream:
    epoch: str
    top: int = 0
    pubs: deque[Publication] = field(default_factory=deque)
    size: int = 0
    expire_at: float = 0.0  # entries vanish at this time (history_ttl after the last publish)
    meta_expire_at: float = 0.0  # the whole stream (epoch, top) vanishes at this time


class MemoryBroker(Broker):
    def __init__(self, *, history_meta_ttl: float = DEFAULT_META_TTL) -> None:
        self._handler: BrokerEventHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._results: dict[tuple[str, str], tuple[PublishResult, float]] = {}
        self._default_meta_ttl = history_meta_ttl
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        now = time.monotonic()
        for ch in [ch for ch, s in self._streams.items() if s.meta_expire_at <= now]:
            del self._streams[ch]
        for key in [k for k, (_, exp) in self._results.items() if exp <= now]:
            del self._results[key]
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    async def subscribe(self, *channels: str) -> None:
        return None  # every publication passes through this process already

    async def unsubscribe(self, *channels: str) -> None:
        return None

    def _stream(self, channel: str, now: float, create: bool) -> _Stream | None:
        stream = self._streams.get(channel)
        if stream is not None and stream.meta_expire_at <= now:
            del self._streams[channel]
            stream = None
        if stream is None and create:
            stream = self._streams[channel] = _Stream(epoch=new_epoch())
        if stream is not None and stream.expire_at <= now and stream.pubs:
            stream.pubs.clear()
        return stream

    def _meta_ttl(self, ttl: float) -> float:
        # A negative TTL is a permanent meta (a persistent map's, node/maps/options.py PERMANENT).
        return ttl if ttl > 0 else math.inf if ttl < 0 else self._default_meta_ttl

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        return self._publish(channel, data, opts)

    def publish_then(self, channel: str, data: bytes, opts: PublishOptions, done: PublishDone) -> None:
        try:
            result = self._publish(channel, data, opts)
        except Exception as e:  # a bug below, not a publish's failure: still its caller's error, not a hang
            done(e)
            return
        done(result)  # at once: nothing here waits

    def _publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        # No await from here to the fan-out: the append and the delivery are atomic for this channel.
        results, delivered = self._store([(channel, data, opts)])
        if delivered and self._handler is not None:
            self._handler.handle_publication(*delivered[0])
        return results[0]

    async def publish_many(self, items: Sequence[tuple[str, bytes, PublishOptions]]) -> list[PublishResult | Exception]:
        # All stored first, then handed over together: no await separates the two, so a subscriber sees the
        # same sequence as with one call per item, and the handler does its bookkeeping once per batch.
        results, delivered = self._store(items)
        if delivered and self._handler is not None:
            self._handler.handle_publications(delivered)
        out: list[PublishResult | Exception] = [*results]  # none is an error here
        return out

    def _store(self, items: Sequence[tuple[str, bytes, PublishOptions]],
               ) -> tuple[list[PublishResult], list[tuple[str, Publication, StreamPosition]]]:
        """Append each item to its channel's stream: their results, and the publications to deliver (not the
        ones an idempotency key suppressed). No send time (time_ms) on them: it only measures the trip through
        a broker (the PUB/SUB lag metric), and here the publication is handed to the hub right away."""
        now = time.monotonic()
        streams = self._streams
        results: list[PublishResult] = []
        delivered: list[tuple[str, Publication, StreamPosition]] = []
        for channel, data, opts in items:
            if opts.idempotency_key:
                cached = self._results.get((channel, opts.idempotency_key))
                if cached is not None and cached[1] > now:
                    results.append(PublishResult(cached[0].position, suppressed=True))
                    continue
            if opts.history_size > 0 and opts.history_ttl > 0:
                stream = streams.get(channel)
                if stream is None or stream.meta_expire_at <= now or stream.expire_at <= now:
                    stream = self._stream(channel, now, create=True)
                    assert stream is not None  # create=True always returns a stream
                pubs = stream.pubs
                if pubs.maxlen != opts.history_size:  # a new stream, or a reload changed the size
                    pubs = stream.pubs = deque(pubs, maxlen=opts.history_size)  # the newest kept
                top = stream.top = stream.top + 1
                if opts.use_delta or opts.key or opts.removed:
                    # A map key's delta base is its own previous value, a stream's the previous publication.
                    prev = pubs[-1] if pubs else None
                    base = opts.key_base if opts.key else \
                        prev.data if prev is not None and prev.offset == top - 1 else None
                    pub = Publication(data, top, opts.client_info, opts.tags, delta=opts.use_delta, key=opts.key,
                                      removed=opts.removed, prev_data=base)
                else:
                    # The usual publication: positional arguments, as keywords cost as much as the rest of it. No
                    # previous payload: only a delta reads it (and keeping it would hold it in memory).
                    pub = Publication(data, top, opts.client_info, opts.tags)
                pubs.append(pub)  # the oldest drops out
                stream.expire_at = now + opts.history_ttl
                stream.meta_expire_at = now + self._meta_ttl(opts.history_meta_ttl)
                position = StreamPosition(top, stream.epoch)
            else:
                pub = Publication(data, info=opts.client_info, tags=opts.tags, key=opts.key, removed=opts.removed)
                position = StreamPosition()
            result = PublishResult(position)
            if opts.idempotency_key:
                self._results[(channel, opts.idempotency_key)] = (result, now + opts.idempotent_result_ttl)
            results.append(result)
            delivered.append((channel, pub, position))
        return results, delivered

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None:
            self._handler.handle_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None:
            self._handler.handle_leave(channel, info)

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        return None  # a single node has nobody to tell

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        now = time.monotonic()
        # Reading creates the stream so that a positioned subscriber gets a stable epoch (spec §4.1).
        stream = self._stream(channel, now, create=opts.create)
        if stream is None:
            return HistoryResult((), StreamPosition(0, ""))
        stream.meta_expire_at = max(stream.meta_expire_at, now + self._meta_ttl(opts.history_meta_ttl))
        position = StreamPosition(stream.top, stream.epoch)
        if opts.limit == 0:
            return HistoryResult((), position)
        pubs: list[Publication] = list(stream.pubs)
        since = opts.since
        if since is not None:
            if opts.reverse:
                pubs = [p for p in pubs if p.offset < since.offset]
            else:
                pubs = [p for p in pubs if p.offset > since.offset]
        if opts.reverse:
            pubs.reverse()
        if opts.limit > 0:
            pubs = pubs[: opts.limit]
        return HistoryResult(tuple(pubs), position)

    def healthy(self) -> bool:
        return True

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.pubs.clear()


class MemoryPresenceManager(PresenceManager):
    """Entries expire ``ttl`` seconds after they were last added, like the Redis engine's: a live connection
    re-adds its own every ``client.presence_update_interval``, so only abandoned entries lapse."""

    def __init__(self, *, ttl: float = DEFAULT_PRESENCE_TTL) -> None:
        self._ttl = ttl
        self._channels: dict[str, dict[str, tuple[ClientInfo, float]]] = {}

    def _live(self, channel: str) -> dict[str, tuple[ClientInfo, float]]:
        entries = self._channels.get(channel)
        if not entries:
            return {}
        now = time.monotonic()
        expired = [cid for cid, (_, exp) in entries.items() if exp <= now]
        for cid in expired:
            del entries[cid]
        if not entries:
            del self._channels[channel]
        return entries

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return {cid: info for cid, (info, _) in self._live(channel).items()}

    async def presence_stats(self, channel: str) -> PresenceStats:
        entries = self._live(channel)
        return PresenceStats(len(entries), len({info.user for info, _ in entries.values()}))

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        self._channels.setdefault(channel, {})[client_id] = (info, time.monotonic() + self._ttl)

    async def remove_presence(self, channel: str, client_id: str, user_id: str) -> None:
        entries = self._channels.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._channels[channel]

    async def close(self) -> None:
        self._channels.clear()
