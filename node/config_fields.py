"""What several configuration modules share (node/config.py and each feature's config module): the duration and
keyed field helpers, and the Redis connection keys that the engine and a Redis Stream consumer both take."""

from __future__ import annotations

from dataclasses import Field, dataclass, field
from typing import Any, Final

DURATION: Final = {"duration": True}  # the metadata that tells the loader (node/config_load.py) to parse a duration
KEY: Final = "key"  # the metadata naming a field's config key, where it is not the field's name


def duration(default: float) -> Any:
    """A field in seconds that the config gives as a Go duration string ("25s", "720h") or integer nanoseconds."""
    return field(default=default, metadata=DURATION)


def keyed(default: Any, key: str) -> Any:
    """A field whose config key is ``key`` with ``{}`` filled in by the section class's ``KEY_WORD``: one
    declaration serves sections that spell the same keys differently (``channels_value``, ``channels_header``)."""
    return field(default=default, metadata={KEY: key})


def config_key(cls: type, f: Field[Any]) -> str:
    """The config key of ``f``, a field of the dataclass ``cls``: its name, unless ``keyed`` says otherwise."""
    key = f.metadata.get(KEY)
    return f.name if key is None else str(key).format(getattr(cls, "KEY_WORD", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConnectionConfig:
    """Where a Redis is and how to log in and wait for it (Centrifugo's Redis options, as each section spells them)."""

    address: tuple[str, ...] = ("redis://127.0.0.1:6379",)
    user: str = ""
    password: str = ""
    db: int = 0
    connect_timeout: float = duration(1.0)
    io_timeout: float = duration(4.0)
