"""The requests and results of every proxy hook, shared by the HTTP proxy, the GRPC proxy and in-process
handlers (an application embedding Fugato registers async callables taking and returning these).

A hook refuses by raising ``ReplyError(Error(...))`` (the client gets that error) or
``DisconnectError(Disconnect(...))`` (the connection is closed with that code), as the backend answers
``{"error": …}`` or ``{"disconnect": …}``. Payload fields (``data``, ``info``, ``meta``) are bytes: JSON text
as the client sent it, or any bytes with ``binary_encoding`` (base64 on the wire to an HTTP backend).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Final

from node.auth.jwt import SubscribeOverride
from node.models import kw_record

NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


@kw_record
class ProxyRequest:
    """What every hook is told about the connection."""

    client: str
    transport: str
    protocol: str = "json"
    encoding: str = "json"  # "binary" when the proxy has binary_encoding: payloads go base64 to HTTP
    user: str = ""
    meta: bytes | None = None  # the connection's meta, with include_connection_meta
    # Forwarded as HTTP headers / GRPC metadata (http_headers, grpc_metadata of the proxy), not in the body.
    headers: Mapping[str, str] = field(default_factory=dict)


@kw_record
class ConnectRequest(ProxyRequest):
    data: bytes | None = None
    name: str = ""
    version: str = ""
    channels: tuple[str, ...] = ()


@kw_record
class ConnectResult:
    user: str = ""
    expire_at: int = 0
    info: bytes | None = None
    data: bytes | None = None
    channels: tuple[str, ...] = ()
    subs: Mapping[str, SubscribeResult] = field(default_factory=dict)  # server-side subscriptions
    meta: bytes | None = None


@kw_record
class RefreshRequest(ProxyRequest):
    pass


@kw_record
class RefreshResult:
    expired: bool = False
    expire_at: int = 0
    info: bytes | None = None
    meta: bytes | None = None


@kw_record
class SubscribeRequest(ProxyRequest):
    channel: str
    token: str = ""
    data: bytes | None = None


@kw_record
class SubscribeResult:
    """A subscribe proxy's answer, and each server-side subscription of a connect result (``subs``)."""

    expire_at: int = 0
    info: bytes | None = None
    data: bytes | None = None
    override: SubscribeOverride | None = None


@kw_record
class PublishRequest(ProxyRequest):
    channel: str
    data: bytes


@kw_record
class PublishResult:
    data: bytes | None = None  # None: publish what the client sent
    skip_history: bool = False
    tags: Mapping[str, str] | None = None
    idempotency_key: str = ""
    delta: bool = False


@kw_record
class RPCRequest(ProxyRequest):
    method: str
    data: bytes | None = None


@kw_record
class RPCResult:
    data: bytes | None = None


@kw_record
class SubRefreshRequest(ProxyRequest):
    channel: str


@kw_record
class SubRefreshResult:
    expired: bool = False
    expire_at: int = 0
    info: bytes | None = None


class ProxyCallError(Exception):
    """The backend could not give an answer (down, slow, 5xx, garbage); ``outcome`` labels the metric.
    ``reply`` is set when a ``status_to_code_transforms`` rule maps the HTTP status to an error/disconnect."""

    def __init__(self, outcome: str, detail: str, reply: Exception | None = None) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome
        self.reply = reply
