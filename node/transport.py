"""What the node needs from a connection's transport (WebSocket now; SSE and HTTP-streaming later)."""

from __future__ import annotations

from typing import Protocol

from node.errors import Disconnect


class Transport(Protocol):
    """A client's byte pipe. ``write`` is synchronous: it hands bytes to the kernel or the event loop's buffer
    without awaiting, so the fan-out path never blocks on a socket.

    Messages are framed once, then written: ``frame`` turns one protocol message into the bytes this transport
    puts on the wire (a WebSocket frame, an SSE event ...). Transports with the same ``framing`` produce the
    same bytes for the same message, so a broadcast frames each publication once per framing, not per client.
    """

    @property
    def name(self) -> str: ...  # "websocket" | "sse" | "http_stream"

    @property
    def framing(self) -> str: ...

    @property
    def unidirectional(self) -> bool: ...

    def frame(self, message: bytes) -> bytes:
        """The wire bytes of one protocol message."""

    def write(self, data: bytes) -> None:
        """Write framed bytes (one or more whole frames) in one go."""

    def buffered(self) -> int:
        """Bytes accepted by ``write`` that the kernel has not taken yet."""

    @property
    def closed(self) -> bool: ...

    async def close(self, disconnect: Disconnect) -> None:
        """Close with the disconnect's code and reason (close frame, or disconnect push then end)."""
