"""The HTTP proxy: each hook is a JSON POST to the proxy's endpoint, answered by ``{"result": …}``,
``{"error": {code, message}}`` or ``{"disconnect": {code, reason}}`` (Centrifugo's proxy JSON).

One connection pool per proxy (``http_client.HttpPool``) keeps connections to the backend alive and reuses
them, so a connect storm does not open a TCP connection per call. The proxy's ``timeout`` bounds each call (the
pool's one timer).
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Mapping
from typing import Any, Final

import orjson

from node.auth.jwt import SubscribeOverride
from node.errors import Disconnect, DisconnectError, Error, ReplyError
from node.proxy import types as pt
from node.proxy.base import ProxyBackend, client_ssl_context, request_body
from node.proxy.config import ProxyConfig
from node.proxy.http_client import HttpCallError, HttpPool, render_headers

# Connections kept per backend: enough for a connect storm without a socket per call.
POOL_SIZE = 256
PUBLISH_AS_SENT: Final = pt.PublishResult()


class HttpProxy(ProxyBackend):
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._pool: HttpPool | None = None
        self._transforms = {t.status_code: t for t in config.http.status_to_code_transforms}
        self._static = dict(config.http.static_headers)
        # The headers of a call that forwards none of the client's: rendered once.
        self._headers = render_headers({**self._static, "Content-Type": "application/json"})

    @property
    def kind(self) -> str:
        return "http"

    def _client(self) -> HttpPool:
        pool = self._pool
        if pool is None:
            tls = self.config.http.tls
            context = None
            if self.config.endpoint.startswith("https://"):
                context = client_ssl_context(tls) if tls.enabled else ssl.create_default_context()
            # Created on first use, inside the running loop that will use it.
            pool = self._pool = HttpPool(self.config.endpoint, limit=POOL_SIZE, timeout=self.config.timeout,
                                         ssl_context=context, server_hostname=tls.server_name or None)
        return pool

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def _headers_of(self, req: pt.ProxyRequest) -> bytes:
        if not req.headers:
            return self._headers
        return render_headers({**self._static, **req.headers, "Content-Type": "application/json"})

    async def post(self, req: pt.ProxyRequest, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST one request; the response's ``result`` (None if absent), or the backend's refusal raised."""
        try:  # the pool bounds the call by the proxy's timeout
            status, raw = await self._client().post(orjson.dumps(body), self._headers_of(req))
        except TimeoutError:
            raise pt.ProxyCallError("timeout", f"no answer within {self.config.timeout}s") from None
        except HttpCallError as e:
            raise pt.ProxyCallError("unavailable", str(e)) from None
        if status != 200:
            raise self._status_error(status)
        return answer(raw)

    def _status_error(self, status: int) -> pt.ProxyCallError:
        t = self._transforms.get(status)
        reply: Exception | None = None
        if t is not None and t.to_error.code:
            reply = ReplyError(Error(t.to_error.code, t.to_error.message, t.to_error.temporary))
        elif t is not None and t.to_disconnect.code:
            reply = DisconnectError(Disconnect(t.to_disconnect.code, t.to_disconnect.reason))
        return pt.ProxyCallError("bad_status", f"HTTP {status}", reply)

    # --- hooks --------------------------------------------------------------------------------------------

    def _body(self, req: pt.ProxyRequest, data: bytes | None = None) -> dict[str, Any]:
        return request_body(req, data, binary=self.config.binary_encoding, raw=orjson.Fragment)

    async def connect(self, req: pt.ConnectRequest) -> pt.ConnectResult | None:
        body = self._body(req, req.data)
        body.update((k, v) for k, v in (("name", req.name), ("version", req.version),
                                        ("channels", list(req.channels))) if v)
        r = await self.post(req, body)
        if r is None:
            return None
        subs = _field(r, "subs", dict, {})
        return pt.ConnectResult(
            user=_field(r, "user", str, ""), expire_at=_field(r, "expire_at", int, 0), info=payload(r, "info"),
            data=payload(r, "data"), channels=tuple(_field(r, "channels", list, [])), meta=raw_json(r, "meta"),
            subs={ch: _sub_options(opts) for ch, opts in subs.items()})

    async def refresh(self, req: pt.RefreshRequest) -> pt.RefreshResult | None:
        r = await self.post(req, self._body(req))
        if r is None:
            return None
        return pt.RefreshResult(expired=_field(r, "expired", bool, False), expire_at=_field(r, "expire_at", int, 0),
                             info=payload(r, "info"), meta=raw_json(r, "meta"))

    async def subscribe(self, req: pt.SubscribeRequest) -> pt.SubscribeResult:
        body = self._body(req, req.data)
        body["channel"] = req.channel
        if req.token:
            body["token"] = req.token
        return _sub_options(await self.post(req, body) or {})

    async def publish(self, req: pt.PublishRequest) -> pt.PublishResult:
        body = self._body(req, req.data)
        body["channel"] = req.channel
        r = await self.post(req, body)
        if not r:  # the common answer, {"result": {}}: publish as the client sent it
            return PUBLISH_AS_SENT
        tags = _field(r, "tags", dict, None)
        return pt.PublishResult(data=payload(r, "data"), skip_history=_field(r, "skip_history", bool, False),
                             tags=tags, idempotency_key=_field(r, "idempotency_key", str, ""),
                             delta=_field(r, "delta", bool, False))

    async def rpc(self, req: pt.RPCRequest) -> pt.RPCResult:
        body = self._body(req, req.data)
        body["method"] = req.method
        r = await self.post(req, body) or {}
        return pt.RPCResult(data=payload(r, "data"))

    async def sub_refresh(self, req: pt.SubRefreshRequest) -> pt.SubRefreshResult:
        body = self._body(req)
        body["channel"] = req.channel
        r = await self.post(req, body)
        if r is None:
            return pt.SubRefreshResult(expired=True)
        return pt.SubRefreshResult(expired=_field(r, "expired", bool, False), expire_at=_field(r, "expire_at", int, 0),
                                info=payload(r, "info"))


# --- decoding the backend's JSON -----------------------------------------------------------------------------

def answer(raw: bytes) -> dict[str, Any] | None:
    """The ``result`` of a proxy response; its ``error`` / ``disconnect`` raised as the client's refusal."""
    try:
        resp = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise pt.ProxyCallError("bad_response", "not JSON") from None
    if not isinstance(resp, dict):
        raise pt.ProxyCallError("bad_response", "not a JSON object")
    disconnect = resp.get("disconnect")
    if disconnect:
        if not isinstance(disconnect, dict):
            raise pt.ProxyCallError("bad_response", "disconnect is not an object")
        raise DisconnectError(Disconnect(_field(disconnect, "code", int, 0), _field(disconnect, "reason", str, "")))
    error = resp.get("error")
    if error:
        if not isinstance(error, dict):
            raise pt.ProxyCallError("bad_response", "error is not an object")
        raise ReplyError(Error(_field(error, "code", int, 0), _field(error, "message", str, ""),
                               _field(error, "temporary", bool, False)))
    result = resp.get("result")
    if result is None:
        return None
    if not isinstance(result, dict):
        raise pt.ProxyCallError("bad_response", "result is not an object")
    return result


def _field(obj: Mapping[str, Any], key: str, tp: type, default: Any) -> Any:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise pt.ProxyCallError("bad_response", f"{key} is not a {tp.__name__}")
    return value


def payload(obj: Mapping[str, Any], key: str) -> bytes | None:
    """``b64<key>`` decoded, else ``<key>`` as JSON text, else None."""
    b64 = _field(obj, "b64" + key, str, "")
    if b64:
        try:
            return base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise pt.ProxyCallError("bad_response", f"b64{key} is not base64") from None
    return raw_json(obj, key)


def raw_json(obj: Mapping[str, Any], key: str) -> bytes | None:
    value = obj.get(key)
    return None if value is None else orjson.dumps(value)


def _override(obj: Mapping[str, Any]) -> SubscribeOverride | None:
    o = _field(obj, "override", dict, None)
    if o is None:
        return None

    def flag(name: str) -> bool | None:
        v = _field(o, name, dict, None)
        return None if v is None else _field(v, "value", bool, False)

    return SubscribeOverride(presence=flag("presence"), join_leave=flag("join_leave"),
                             force_push_join_leave=flag("force_push_join_leave"),
                             force_positioning=flag("force_positioning"), force_recovery=flag("force_recovery"))


def _sub_options(obj: object) -> pt.SubscribeResult:
    if not isinstance(obj, dict):
        raise pt.ProxyCallError("bad_response", "subscription options are not an object")
    return pt.SubscribeResult(expire_at=_field(obj, "expire_at", int, 0), info=payload(obj, "info"),
                                  data=payload(obj, "data"), override=_override(obj))

