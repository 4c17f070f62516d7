"""In-memory fakes for unit tests of the hub and the client queue (no sockets)."""

from __future__ import annotations

from collections.abc import Sequence

from node.errors import Disconnect


class FakeTransport:
    """Collects written frames; ``buffer`` simulates bytes the kernel has not taken yet."""

    name = "fake"

    def __init__(self, *, unidirectional: bool = False) -> None:
        self.unidirectional = unidirectional
        self.writes: list[list[bytes]] = []
        self.buffer = 0
        self.closed_with: Disconnect | None = None

    def write_frames(self, frames: Sequence[bytes]) -> None:
        self.writes.append(list(frames))

    def buffered(self) -> int:
        return self.buffer

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    async def close(self, disconnect: Disconnect) -> None:
        self.closed_with = disconnect

    @property
    def frames(self) -> list[bytes]:
        return [f for w in self.writes for f in w]

    @property
    def messages(self) -> list[bytes]:
        return [m for f in self.frames for m in f.split(b"\n")]
