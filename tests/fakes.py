"""In-memory fakes for unit tests of the hub and the client queue (no sockets)."""

from __future__ import annotations

from node.errors import Disconnect

END = b"\x00"  # the fake framing: each message is followed by a NUL byte


class FakeTransport:
    """Collects written bytes; ``buffer`` simulates bytes the kernel has not taken yet."""

    name = "fake"
    protocol = "json"
    framing = "fake"
    session = ""

    def __init__(self, *, unidirectional: bool = False) -> None:
        self.unidirectional = unidirectional
        self.writes: list[bytes] = []
        self.buffer = 0
        self.closed_with: Disconnect | None = None

    @staticmethod
    def frame(message: bytes) -> bytes:
        return message + END

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def buffered(self) -> int:
        return self.buffer

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    async def close(self, disconnect: Disconnect) -> None:
        self.closed_with = disconnect

    @property
    def messages(self) -> list[bytes]:
        """Every message written, in order."""
        return [m for w in self.writes for m in w.split(END)[:-1]]
