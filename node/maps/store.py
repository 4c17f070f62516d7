"""Where map state lives. ``MemoryMapStore`` keeps it in this process next to the memory engine's streams;
the Redis store (node/broker/redis_map.py) keeps it in Redis next to the channel's stream. Both announce each
change as a publication of the channel's stream (``key``/``removed`` set), so delivery is the node's own.

A write that changes nothing (an idempotency key seen before, a key condition that does not hold, a remove of a
key that is not there) is suppressed: nothing is stored or announced, and the result says why.

A key past its TTL stays until the cleanup round (``expired`` then ``remove(expired_only=True)``) announces its
removal: until then it counts as there for key modes, versions, touches and state pages, as in Centrifugo's
brokers (whose state and stream would otherwise disagree). A plain removal of it is the exception on PostgreSQL,
where, as Centrifugo's, it answers key_not_found and leaves the removal to the cleanup round."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from node.broker.base import PublishDone, settle_then
from node.maps.state import (
    SUPPRESSED_IDEMPOTENCY,
    SUPPRESSED_KEY_NOT_FOUND,
    UNCONDITIONAL,
    Conditions,
    Entry,
    MemoryMapState,
)
from node.models import HistoryOptions, HistoryResult, PublishOptions, PublishResult


class MapStore(Protocol):
    async def set(self, channel: str, data: bytes, opts: PublishOptions, key_ttl: float,
                  conditions: Conditions = UNCONDITIONAL) -> PublishResult: ...

    def set_then(self, channel: str, data: bytes, opts: PublishOptions, key_ttl: float, done: PublishDone) -> None:
        """``set`` of an unconditional write without an idempotency key: ``done`` gets its result or exception,
        once, maybe before this returns (the memory store, and the Redis one's reply, spare a task per call)."""
        ...

    async def remove(self, channel: str, opts: PublishOptions, *, expired_only: bool = False) -> PublishResult:
        """Remove ``opts.key``; suppressed (nothing announced) if it is not there, or, with ``expired_only``,
        not expired: several nodes may try to expire the same key, one announces it."""
        ...

    async def touch(self, channel: str, key: str, key_ttl: float) -> bool:
        """Prolong a live ``key``'s TTL without a change (no stream entry); False if it is not there."""
        ...

    async def page(self, channel: str, cursor: str, limit: int) -> tuple[list[tuple[str, Entry]], str]: ...

    async def expired(self, batch: int) -> list[tuple[str, str]]: ...

    async def count(self, channel: str) -> int: ...

    async def clear(self, channel: str) -> None: ...

    async def close(self) -> None: ...


# ``Broker.publish_then``'s signature (Node.publish_then): starts a publish, its outcome goes to the callback.
PublishThen = Callable[[str, bytes, PublishOptions, PublishDone], None]


class MemoryMapStore:
    def __init__(self, publish: Callable[[str, bytes, PublishOptions], Awaitable[PublishResult]],
                 history: Callable[[str, HistoryOptions], Awaitable[HistoryResult]],
                 publish_then: PublishThen | None = None) -> None:
        self._publish = publish
        self._publish_then = publish_then
        self._history = history
        self.state = MemoryMapState()
        # (channel, idempotency key) -> (the first write's result, monotonic expiry)
        self._results: dict[tuple[str, str], tuple[PublishResult, float]] = {}

    def _seen(self, channel: str, opts: PublishOptions) -> PublishResult | None:
        if not opts.idempotency_key:
            return None
        cached = self._results.get((channel, opts.idempotency_key))
        if cached is None or cached[1] <= time.monotonic():
            return None
        return dataclasses.replace(cached[0], suppressed=True, suppress_reason=SUPPRESSED_IDEMPOTENCY)

    async def _unchanged(self, channel: str, opts: PublishOptions, reason: str, *, create: bool) -> PublishResult:
        """A suppressed write's result: the stream's current position and why nothing changed. On a channel
        never written to, a refused publish starts its stream (a new epoch at offset 0) and a refused removal
        does not (offset 0, no epoch), as Centrifugo's memory and PostgreSQL brokers answer."""
        top = await self._history(channel, HistoryOptions(limit=0, history_meta_ttl=opts.history_meta_ttl,
                                                          create=create))
        return PublishResult(top.position, suppressed=True, suppress_reason=reason)

    def _remember(self, channel: str, opts: PublishOptions, result: PublishResult) -> None:
        if opts.idempotency_key:
            self._results[(channel, opts.idempotency_key)] = (result, time.monotonic() + opts.idempotent_result_ttl)

    async def set(self, channel: str, data: bytes, opts: PublishOptions, key_ttl: float,
                  conditions: Conditions = UNCONDITIONAL) -> PublishResult:
        # The memory broker appends and fans out without suspending: no other change to this key runs between
        # the checks, the append and the state update.
        seen = self._seen(channel, opts)
        if seen is not None:
            return seen
        current = self.state.get(channel, opts.key)
        reason = conditions.refusal(current)
        if reason:
            return await self._unchanged(channel, opts, reason, create=True)
        result = await self._publish(channel, data, dataclasses.replace(_delta_base(opts, current), idempotency_key=""))
        self._keep(channel, data, result.position.offset, opts, key_ttl, current, conditions)
        self._remember(channel, opts, result)
        return result

    def _keep(self, channel: str, data: bytes, offset: int, opts: PublishOptions, key_ttl: float,
              current: Entry | None, conditions: Conditions) -> None:
        """Store the key's new entry once its change is in the stream at ``offset``. An unversioned write keeps
        the key's stored version."""
        version, version_epoch = (conditions.version, conditions.version_epoch) if conditions.version or \
            current is None else (current.version, current.version_epoch)
        expire_at = time.monotonic() + key_ttl if key_ttl > 0 else 0.0
        self.state.set(channel, opts.key, Entry(data, offset, opts.client_info, opts.tags, expire_at, version,
                                                version_epoch))

    def set_then(self, channel: str, data: bytes, opts: PublishOptions, key_ttl: float, done: PublishDone) -> None:
        """``set`` of an unconditional write without an idempotency key (the API fast path's), answered from the
        publish's callback: at once on the memory broker, so, as in ``set``, nothing runs between the read of
        the key's entry, the append and the state update."""
        publish_then = self._publish_then
        if publish_then is None or opts.idempotency_key:
            set_in_task(self, channel, data, opts, key_ttl, done)
            return
        current = self.state.get(channel, opts.key)

        def published(outcome: PublishResult | BaseException) -> None:
            if not isinstance(outcome, BaseException):
                self._keep(channel, data, outcome.position.offset, opts, key_ttl, current, UNCONDITIONAL)
            done(outcome)

        publish_then(channel, data, _delta_base(opts, current), published)

    async def remove(self, channel: str, opts: PublishOptions, *, expired_only: bool = False) -> PublishResult:
        seen = self._seen(channel, opts)
        if seen is not None:
            return seen
        entry = self.state.get(channel, opts.key)
        if entry is None or (expired_only and not (entry.expire_at and entry.expire_at <= time.monotonic())):
            return await self._unchanged(channel, opts, SUPPRESSED_KEY_NOT_FOUND, create=False)
        self.state.remove(channel, opts.key)
        # The removal carries the entry's tags (as Centrifugo's does), so tags-filtered subscribers see it.
        tags = entry.tags if opts.tags is None else opts.tags
        result = await self._publish(channel, b"", dataclasses.replace(opts, idempotency_key="", tags=tags))
        self._remember(channel, opts, result)
        return result

    async def touch(self, channel: str, key: str, key_ttl: float) -> bool:
        # A key past its TTL whose removal is not announced yet is still there (see the module's docstring).
        entry, now = self.state.get(channel, key), time.monotonic()
        if entry is None:
            return False
        self.state.set(channel, key, dataclasses.replace(entry, expire_at=now + key_ttl if key_ttl > 0 else 0.0))
        return True

    async def page(self, channel: str, cursor: str, limit: int) -> tuple[list[tuple[str, Entry]], str]:
        return self.state.page(channel, cursor, limit)

    async def expired(self, batch: int) -> list[tuple[str, str]]:
        now = time.monotonic()
        # The cleanup round also forgets idempotency results past their TTL.
        for k in [k for k, (_, until) in self._results.items() if until <= now]:
            del self._results[k]
        return self.state.expired(now, batch)

    async def count(self, channel: str) -> int:
        return self.state.size(channel)

    async def clear(self, channel: str) -> None:
        self.state.drop(channel)

    async def close(self) -> None:
        self.state.clear()
        self._results.clear()


def _delta_base(opts: PublishOptions, current: Entry | None) -> PublishOptions:
    """``opts`` with the key's current value as its fossil delta base, when the write offers a delta."""
    return dataclasses.replace(opts, key_base=current.data) if opts.use_delta and current is not None else opts


def set_in_task(store: MapStore, channel: str, data: bytes, opts: PublishOptions, key_ttl: float,
                 done: PublishDone) -> None:
    """``store.set`` (unconditional) in a task, its outcome to ``done``: a store's ``set_then`` where it cannot
    answer from a callback."""
    settle_then(store.set(channel, data, opts, key_ttl), done)
