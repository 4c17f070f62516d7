"""What a shared poll refresh call asks and answers, independent of how the backend is reached (the HTTP and
GRPC proxies in ``node/proxy/shared_poll.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Item:
    """One key of the backend's answer. ``data`` None: unchanged (versioned mode) or a removal. ``prev_data``:
    the data of the version the node holds, which the backend may add so that delta subscribers get a fossil
    patch against it (centrifuge's ``SharedPollRefreshItem.PrevData``)."""

    key: str
    data: bytes | None = None
    version: int = 0
    removed: bool = False
    prev_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    items: Sequence[Item]
    epoch: str = ""


# (channel, [(key, version)]) -> the backend's answer; raises when the backend gave none (down, slow, refused).
Refresher = Callable[[str, Sequence[tuple[str, int]]], Awaitable[Answer]]
