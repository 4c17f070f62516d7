"""What several configuration modules share (node/config.py and each feature's config module): the duration field
helper, and the Redis connection keys that the engine and a Redis Stream consumer both take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

DURATION: Final = {"duration": True}  # the metadata that tells the loader (node/config_load.py) to parse a duration


def duration(default: float) -> Any:
    """A field in seconds that the config gives as a Go duration string ("25s", "720h") or integer nanoseconds."""
    return field(default=default, metadata=DURATION)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConnectionConfig:
    """Where a Redis is and how to log in and wait for it (Centrifugo's Redis options, as each section spells them)."""

    address: tuple[str, ...] = ("redis://127.0.0.1:6379",)
    user: str = ""
    password: str = ""
    db: int = 0
    connect_timeout: float = duration(1.0)
    io_timeout: float = duration(4.0)
