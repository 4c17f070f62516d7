"""Centrifugo's error, unsubscribe and disconnect codes as immutable values, plus the exceptions that carry them.

Handlers refuse a command by raising ``ReplyError(ERROR_X)`` (the client gets an error reply) or
``DisconnectError(DISCONNECT_X)`` (the connection is closed with that code). Both derive from ``NodeError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Error:
    """A reply error: ``{"code": N, "message": "...", "temporary": true?}``."""

    code: int
    message: str
    temporary: bool = False


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A connection close: the WebSocket close code and reason, or a ``disconnect`` push elsewhere."""

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        c = self.code
        return 3000 <= c < 3500 or 4000 <= c < 4500 or c >= 5000


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """A server-initiated unsubscribe push: codes >= 2500 make the SDK resubscribe."""

    code: int
    reason: str


# Temporary errors: the SDK retries the command (or the subscription) instead of giving up.
ERROR_INTERNAL: Final = Error(100, "internal server error", temporary=True)
ERROR_TOO_MANY_REQUESTS: Final = Error(111, "too many requests", temporary=True)
# Final errors, in code order.
ERROR_UNAUTHORIZED: Final = Error(101, "unauthorized")
ERROR_UNKNOWN_CHANNEL: Final = Error(102, "unknown channel")
ERROR_PERMISSION_DENIED: Final = Error(103, "permission denied")
ERROR_METHOD_NOT_FOUND: Final = Error(104, "method not found")
ERROR_ALREADY_SUBSCRIBED: Final = Error(105, "already subscribed")
ERROR_LIMIT_EXCEEDED: Final = Error(106, "limit exceeded")
ERROR_BAD_REQUEST: Final = Error(107, "bad request")
ERROR_NOT_AVAILABLE: Final = Error(108, "not available")
ERROR_TOKEN_EXPIRED: Final = Error(109, "token expired")
ERROR_EXPIRED: Final = Error(110, "expired")
ERROR_UNRECOVERABLE_POSITION: Final = Error(112, "unrecoverable position")
# The server API spells 104 differently from the client protocol.
API_ERROR_NOT_FOUND: Final = Error(104, "not found")

UNSUBSCRIBE_SERVER: Final = Unsubscribe(2000, "server unsubscribe")
UNSUBSCRIBE_INSUFFICIENT_STATE: Final = Unsubscribe(2500, "insufficient state")
UNSUBSCRIBE_EXPIRED: Final = Unsubscribe(2501, "subscription expired")

DISCONNECT_CONNECTION_CLOSED: Final = Disconnect(3000, "connection closed")
DISCONNECT_SHUTDOWN: Final = Disconnect(3001, "shutdown")
DISCONNECT_SERVER_ERROR: Final = Disconnect(3004, "internal server error")
DISCONNECT_EXPIRED: Final = Disconnect(3005, "connection expired")
DISCONNECT_SUB_EXPIRED: Final = Disconnect(3006, "subscription expired")
DISCONNECT_SLOW: Final = Disconnect(3008, "slow")
DISCONNECT_WRITE_ERROR: Final = Disconnect(3009, "write error")
DISCONNECT_INSUFFICIENT_STATE: Final = Disconnect(3010, "insufficient state")
DISCONNECT_FORCE_RECONNECT: Final = Disconnect(3011, "force reconnect")
DISCONNECT_NO_PONG: Final = Disconnect(3012, "no pong")
DISCONNECT_TOO_MANY_REQUESTS: Final = Disconnect(3013, "too many requests")
DISCONNECT_INVALID_TOKEN: Final = Disconnect(3500, "invalid token")
DISCONNECT_BAD_REQUEST: Final = Disconnect(3501, "bad request")
DISCONNECT_STALE: Final = Disconnect(3502, "stale")
DISCONNECT_FORCE_NO_RECONNECT: Final = Disconnect(3503, "force disconnect")
DISCONNECT_CONNECTION_LIMIT: Final = Disconnect(3504, "connection limit")
DISCONNECT_CHANNEL_LIMIT: Final = Disconnect(3505, "channel limit")
DISCONNECT_INAPPROPRIATE_PROTOCOL: Final = Disconnect(3506, "inappropriate protocol")
DISCONNECT_PERMISSION_DENIED: Final = Disconnect(3507, "permission denied")
DISCONNECT_NOT_AVAILABLE: Final = Disconnect(3508, "not available")
DISCONNECT_TOO_MANY_ERRORS: Final = Disconnect(3509, "too many errors")


class NodeError(Exception):
    """Root of every error this package raises on purpose."""


class ReplyError(NodeError):
    """Refuse a command with an error reply; the connection stays open."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class DisconnectError(NodeError):
    """Refuse a command by closing the connection with a disconnect code."""

    def __init__(self, disconnect: Disconnect) -> None:
        super().__init__(f"{disconnect.code}: {disconnect.reason}")
        self.disconnect = disconnect


class ConfigError(NodeError):
    """The configuration is invalid; the CLI prints the message and exits with code 1."""


class TokenError(NodeError):
    """A JWT could not be accepted (bad signature, claims, algorithm or shape)."""


class TokenExpiredError(TokenError):
    """The JWT is well-formed and signed but its ``exp`` has passed (or ``nbf`` is in the future)."""
