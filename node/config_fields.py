"""Field helpers shared by every configuration dataclass (node/config.py and each feature's config module)."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Final

DURATION: Final = {"duration": True}  # the metadata that tells the loader (node/config_load.py) to parse a duration


def duration(default: float) -> Any:
    """A field in seconds that the config gives as a Go duration string ("25s", "720h") or integer nanoseconds."""
    return field(default=default, metadata=DURATION)
