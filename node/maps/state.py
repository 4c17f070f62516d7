"""The memory map broker's state: per channel, the current entry of each key. The change stream itself is the
channel's ordinary history stream in the engine's broker (publications carrying ``key``/``removed``)."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from node.models import ClientInfo, record

# Why a map publish or remove changed nothing (Centrifugo's suppress_reason values).
SUPPRESSED_IDEMPOTENCY: Final = "idempotency"
SUPPRESSED_VERSION: Final = "version"
SUPPRESSED_KEY_EXISTS: Final = "key_exists"
SUPPRESSED_KEY_NOT_FOUND: Final = "key_not_found"
KEY_MODES: Final = ("", "if_new", "if_exists")


@dataclass(frozen=True, slots=True)
class Conditions:
    """When a map publish may change its key: ``key_mode`` "if_new" (only a new key) or "if_exists" (only an
    existing one), and ``version`` (only above the key's stored version, within the same ``version_epoch``; 0 =
    unversioned, keeping the stored version)."""

    key_mode: str = ""
    version: int = 0
    version_epoch: str = ""

    def refusal(self, current: Entry | None) -> str:
        """The suppress reason against the key's current entry, or "" when the publish may go ahead. Version
        first, then the key mode, as Centrifugo checks them."""
        if current is not None and self.version and current.version and \
                self.version_epoch in ("", current.version_epoch) and self.version <= current.version:
            return SUPPRESSED_VERSION
        if self.key_mode == "if_new" and current is not None:
            return SUPPRESSED_KEY_EXISTS
        if self.key_mode == "if_exists" and current is None:
            return SUPPRESSED_KEY_NOT_FOUND
        return ""


UNCONDITIONAL: Final = Conditions()


@record  # one per map publication (see models.record)
class Entry:
    data: bytes
    offset: int  # the stream offset of the change that set this value
    info: ClientInfo | None = None
    tags: Mapping[str, str] | None = None
    expire_at: float = 0.0  # monotonic seconds; 0 = kept until removed
    version: int = 0  # the last version a publish gave this key (kept by unversioned publishes)
    version_epoch: str = ""


class MemoryMapState:
    def __init__(self) -> None:
        self._channels: dict[str, dict[str, Entry]] = {}

    def set(self, channel: str, key: str, entry: Entry) -> None:
        self._channels.setdefault(channel, {})[key] = entry

    def remove(self, channel: str, key: str) -> bool:
        entries = self._channels.get(channel)
        if entries is None or entries.pop(key, None) is None:
            return False
        if not entries:
            del self._channels[channel]
        return True

    def get(self, channel: str, key: str) -> Entry | None:
        return self._channels.get(channel, {}).get(key)

    def size(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def page(self, channel: str, cursor: str, limit: int) -> tuple[list[tuple[str, Entry]], str]:
        """Up to ``limit`` entries after key ``cursor`` in key order, and the cursor of the next page ("" at the
        end). Keys are the cursor, so a page is stable while others publish (a key set meanwhile is caught up
        from the stream). A key past its TTL is listed until the cleanup round announces its removal, as
        Centrifugo's brokers list it: a subscriber's state and the stream stay consistent."""
        entries = self._channels.get(channel)
        if not entries:
            return [], ""
        keys = sorted(entries)
        start = bisect.bisect_right(keys, cursor) if cursor else 0
        names = keys[start:start + limit]
        more = start + limit < len(keys)
        return [(k, entries[k]) for k in names], names[-1] if more and names else ""

    def expired(self, now: float, batch: int) -> list[tuple[str, str]]:
        """Up to ``batch`` expired (channel, key) pairs per channel; the caller removes and announces them."""
        found: list[tuple[str, str]] = []
        for channel, entries in self._channels.items():
            n = 0
            for key, entry in entries.items():
                if entry.expire_at and entry.expire_at <= now:
                    found.append((channel, key))
                    n += 1
                    if n >= batch:
                        break
        return found

    def drop(self, channel: str) -> None:
        self._channels.pop(channel, None)

    def clear(self) -> None:
        self._channels.clear()
