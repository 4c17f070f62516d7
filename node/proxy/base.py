"""What a proxy backend is: one coroutine per hook, taking and returning the types of ``types.py``.

Implementations: ``HttpProxy`` (JSON over HTTP POST), ``GrpcProxy`` (Centrifugo's ``CentrifugoProxy`` GRPC
service) and ``PythonProxy`` (async callables registered by an application that embeds Fugato, python.py). A backend
raises ``ReplyError`` / ``DisconnectError`` for the backend's own refusals and ``ProxyCallError`` when it got
no usable answer; ``ProxyCaller`` (caller.py) turns the latter into the client's code, a log line and a metric.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from node.errors import ConfigError
from node.proxy import types as pt
from node.proxy.config import ProxyTlsConfig


class ProxyBackend(Protocol):
    """One backend. ``None`` from connect/refresh means the backend answered without a result."""

    @property
    def kind(self) -> str: ...  # "http" | "grpc" | "python": the metric label

    async def connect(self, req: pt.ConnectRequest) -> pt.ConnectResult | None: ...
    async def refresh(self, req: pt.RefreshRequest) -> pt.RefreshResult | None: ...
    async def subscribe(self, req: pt.SubscribeRequest) -> pt.SubscribeResult: ...
    async def publish(self, req: pt.PublishRequest) -> pt.PublishResult: ...
    async def rpc(self, req: pt.RPCRequest) -> pt.RPCResult: ...
    async def sub_refresh(self, req: pt.SubRefreshRequest) -> pt.SubRefreshResult: ...
    async def close(self) -> None: ...


def pem_text(value: str) -> str:
    """A PEM option holds the PEM text itself or a path to a file holding it (as Centrifugo accepts)."""
    if not value or value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text()
    except OSError as e:
        raise ConfigError(f"proxy tls: cannot read {value}: {e.strerror or e}") from e


def client_ssl_context(tls: ProxyTlsConfig) -> ssl.SSLContext:
    """The client-side TLS context of an HTTPS proxy."""
    ctx = ssl.create_default_context(cadata=pem_text(tls.server_ca_pem) or None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_pem and tls.key_pem:
        # ssl loads a certificate chain from files only: PEM text is given as the path it came from.
        ctx.load_cert_chain(tls.cert_pem, tls.key_pem)
    return ctx


def request_body(req: pt.ProxyRequest, data: bytes | None, *, binary: bool, raw: Callable[[bytes], Any],
                 ) -> dict[str, Any]:
    """The fields every request carries plus its payload (``data``, or ``b64data`` with binary_encoding);
    ``raw`` puts JSON bytes on the wire (``orjson.Fragment`` for HTTP, the bytes themselves for GRPC)."""
    body: dict[str, Any] = {"client": req.client, "transport": req.transport, "protocol": req.protocol,
                            "encoding": req.encoding}
    if req.user:
        body["user"] = req.user
    if req.meta is not None:
        body["meta"] = raw(req.meta)
    if data is not None:
        if binary:
            body["b64data"] = base64.b64encode(data).decode()
        else:
            body["data"] = raw(data)
    return body
