"""What the node needs from a connection's transport: every transport under ``node/transports/`` (WebSocket,
HTTP-streaming, SSE, their unidirectional versions, uni GRPC) implements this one protocol."""

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
    def name(self) -> str: ...  # "websocket" | "sse" | "http_stream" | "uni_websocket" | ...

    @property
    def protocol(self) -> str: ...  # "json" | "protobuf": how messages are encoded on this transport

    @property
    def framing(self) -> str: ...

    @property
    def unidirectional(self) -> bool: ...

    @property
    def session(self) -> str: ...  # the emulation session of a bidirectional HTTP-stream/SSE connection, else ""

    def frame(self, message: bytes) -> bytes:
        """The wire bytes of one protocol message, already encoded in this transport's ``protocol`` (a JSON
        message, or a serialised protobuf ``Reply``/``Push``, which the frame prefixes with its length)."""

    def write(self, data: bytes) -> None:
        """Write framed bytes (one or more whole frames) in one go."""

    def buffered(self) -> int:
        """Bytes accepted by ``write`` that the kernel has not taken yet."""

    @property
    def closed(self) -> bool: ...

    async def close(self, disconnect: Disconnect) -> None:
        """Close with the disconnect's code and reason (close frame, or disconnect push then end)."""
