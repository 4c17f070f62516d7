"""What the node needs from a connection's transport (WebSocket now; SSE and HTTP-streaming later)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from node.errors import Disconnect


class Transport(Protocol):
    """A client's byte pipe. ``write_frames`` is synchronous: it hands bytes to the kernel or the event loop's
    buffer without awaiting, so the fan-out path never blocks on a socket."""

    @property
    def name(self) -> str: ...  # "websocket" | "sse" | "http_stream"

    @property
    def unidirectional(self) -> bool: ...

    def write_frames(self, frames: Sequence[bytes]) -> None:
        """Write each element as one protocol frame (one WebSocket message, one SSE event ...)."""

    def buffered(self) -> int:
        """Bytes accepted by ``write_frames`` that the kernel has not taken yet."""

    @property
    def closed(self) -> bool: ...

    async def close(self, disconnect: Disconnect) -> None:
        """Close with the disconnect's code and reason (close frame, or disconnect push then end)."""
