"""Where map state lives. ``MemoryMapStore`` keeps it in this process next to the memory engine's streams;
the Redis store (node/broker/redis_map.py) keeps it in Redis next to the channel's stream. Both announce each
change as a publication of the channel's stream (``key``/``removed`` set), so delivery is the node's own."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from node.maps.state import Entry, MemoryMapState
from node.models import PublishOptions, PublishResult


class MapStore(Protocol):
    async def set(self, channel: str, data: bytes, opts: PublishOptions, key_ttl: float) -> PublishResult: ...

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


class MemoryMapStore:
    def __init__(self, publish: Callable[[str, bytes, PublishOptions], Awaitable[PublishResult]]) -> None:
        self._publish = publish
        self.state = MemoryMapState()

    async def set(self, channel: str, data: bytes, opts: PublishOptions, key_ttl: float) -> PublishResult:
        # The memory broker appends and fans out without suspending: no other change to this key runs between.
        result = await self._publish(channel, data, opts)
        expire_at = time.monotonic() + key_ttl if key_ttl > 0 else 0.0
        self.state.set(channel, opts.key, Entry(data, result.position.offset, opts.client_info, opts.tags, expire_at))
        return result

    async def remove(self, channel: str, opts: PublishOptions, *, expired_only: bool = False) -> PublishResult:
        entry = self.state.get(channel, opts.key)
        if entry is None or (expired_only and not (entry.expire_at and entry.expire_at <= time.monotonic())):
            return PublishResult(suppressed=True)
        self.state.remove(channel, opts.key)
        return await self._publish(channel, b"null", opts)

    async def touch(self, channel: str, key: str, key_ttl: float) -> bool:
        entry, now = self.state.get(channel, key), time.monotonic()
        if entry is None or (entry.expire_at and entry.expire_at <= now):
            return False
        self.state.set(channel, key, dataclasses.replace(entry, expire_at=now + key_ttl if key_ttl > 0 else 0.0))
        return True

    async def page(self, channel: str, cursor: str, limit: int) -> tuple[list[tuple[str, Entry]], str]:
        return self.state.page(channel, cursor, limit)

    async def expired(self, batch: int) -> list[tuple[str, str]]:
        return self.state.expired(time.monotonic(), batch)

    async def count(self, channel: str) -> int:
        return self.state.size(channel)

    async def clear(self, channel: str) -> None:
        self.state.drop(channel)

    async def close(self) -> None:
        self.state.clear()
