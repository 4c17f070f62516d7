"""The GRPC proxy: Centrifugo's ``centrifugal.centrifugo.proxy.CentrifugoProxy`` service at ``grpc://host:port``.

One ``grpc.aio`` channel per proxy (HTTP/2 multiplexes every call over it); each call carries the proxy's
``timeout`` as its deadline and the forwarded headers plus ``static_metadata`` as metadata.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from node.auth.jwt import SubscribeOverride
from node.errors import Disconnect, DisconnectError, Error, ReplyError
from node.proxy import types as pt
from node.proxy.base import ProxyBackend, pem_text, request_body
from node.proxy.config import ProxyConfig
from node.proxy.proto import proxy_pb2 as pb
from node.proxy.proto import proxy_pb2_grpc as pb_grpc


def _target(endpoint: str) -> str:
    return endpoint.removeprefix("grpc://")


class GrpcProxy(ProxyBackend):
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.CentrifugoProxyStub | None = None
        g = config.grpc
        self._static = [(k.lower(), v) for k, v in g.static_metadata.items()]
        if g.credentials_key:
            self._static.append((g.credentials_key.lower(), g.credentials_value))

    @property
    def kind(self) -> str:
        return "grpc"

    def _client(self) -> pb_grpc.CentrifugoProxyStub:
        if self._stub is None:
            g = self.config.grpc
            compression = grpc.Compression.Gzip if g.compression else None
            if g.tls.enabled:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=pem_text(g.tls.server_ca_pem).encode() or None,
                    private_key=pem_text(g.tls.key_pem).encode() or None,
                    certificate_chain=pem_text(g.tls.cert_pem).encode() or None)
                options = [("grpc.ssl_target_name_override", g.tls.server_name)] if g.tls.server_name else []
                self._channel = grpc.aio.secure_channel(_target(self.config.endpoint), creds, options=options,
                                                        compression=compression)
            else:
                self._channel = grpc.aio.insecure_channel(_target(self.config.endpoint), compression=compression)
            self._stub = pb_grpc.CentrifugoProxyStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def _metadata(self, req: pt.ProxyRequest) -> list[tuple[str, str]]:
        return [*self._static, *((k.lower(), v) for k, v in req.headers.items())]

    def _failed(self, e: grpc.aio.AioRpcError) -> pt.ProxyCallError:
        code = e.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return pt.ProxyCallError("timeout", f"no answer within {self.config.timeout}s")
        if code is grpc.StatusCode.UNAVAILABLE:
            return pt.ProxyCallError("unavailable", e.details() or "unavailable")
        return pt.ProxyCallError("bad_status", f"GRPC {code.name}: {e.details()}")

    async def _call(self, method: Callable[..., Awaitable[Any]], req: pt.ProxyRequest, message: Any) -> Any:
        try:
            response = await method(message, timeout=self.config.timeout, metadata=self._metadata(req))
        except grpc.aio.AioRpcError as e:
            raise self._failed(e) from None
        return _refusal_raised(response)

    def _body(self, req: pt.ProxyRequest, data: bytes | None = None) -> dict[str, Any]:
        return request_body(req, data, binary=self.config.binary_encoding, raw=bytes)

    async def connect(self, req: pt.ConnectRequest) -> pt.ConnectResult | None:
        base = self._body(req, req.data)
        base.pop("user", None)
        msg = pb.ConnectRequest(name=req.name, version=req.version, channels=req.channels, **base)
        resp = await self._call(self._client().Connect, req, msg)
        if not resp.HasField("result"):
            return None
        r = resp.result
        return pt.ConnectResult(user=r.user, expire_at=r.expire_at, info=_bytes(r.info, r.b64info),
                             data=_bytes(r.data, r.b64data), channels=tuple(r.channels), meta=r.meta or None,
                             subs={ch: _sub_options(o) for ch, o in r.subs.items()})

    async def refresh(self, req: pt.RefreshRequest) -> pt.RefreshResult | None:
        resp = await self._call(self._client().Refresh, req, pb.RefreshRequest(**self._body(req)))
        if not resp.HasField("result"):
            return None
        r = resp.result
        return pt.RefreshResult(expired=r.expired, expire_at=r.expire_at, info=_bytes(r.info, r.b64info),
                             meta=r.meta or None)

    async def subscribe(self, req: pt.SubscribeRequest) -> pt.SubscribeResult:
        msg = pb.SubscribeRequest(channel=req.channel, token=req.token, **self._body(req, req.data))
        return _sub_options((await self._call(self._client().Subscribe, req, msg)).result)

    async def publish(self, req: pt.PublishRequest) -> pt.PublishResult:
        msg = pb.PublishRequest(channel=req.channel, **self._body(req, req.data))
        resp = await self._call(self._client().Publish, req, msg)
        r = resp.result
        data = _bytes(r.data, r.b64data) if resp.HasField("result") else None
        return pt.PublishResult(data=data, skip_history=r.skip_history, tags=dict(r.tags) or None,
                             idempotency_key=r.idempotency_key, delta=r.delta)

    async def rpc(self, req: pt.RPCRequest) -> pt.RPCResult:
        msg = pb.RPCRequest(method=req.method, **self._body(req, req.data))
        r = (await self._call(self._client().RPC, req, msg)).result
        return pt.RPCResult(data=_bytes(r.data, r.b64data))

    async def open_stream(self, req: pt.SubscribeRequest, bidirectional: bool) -> tuple[Any, pt.SubscribeResult]:
        """Open a subscription stream (``SubscribeUnidirectional`` / ``SubscribeBidirectional``) and read its
        first message, the backend's subscribe answer, within the proxy's timeout. The stream itself has no
        deadline: it lives as long as the subscription. Returns the open call and the subscribe result."""
        msg = pb.SubscribeRequest(channel=req.channel, token=req.token, **self._body(req, req.data))
        stub = self._client()
        if bidirectional:
            call = stub.SubscribeBidirectional(metadata=self._metadata(req))
        else:
            call = stub.SubscribeUnidirectional(msg, metadata=self._metadata(req))
        try:
            async with asyncio.timeout(self.config.timeout):
                if bidirectional:
                    await call.write(pb.StreamSubscribeRequest(subscribe_request=msg))
                first = await call.read()
            if first is grpc.aio.EOF or not first.HasField("subscribe_response"):
                raise pt.ProxyCallError("bad_response", "the stream's first message is not a subscribe response")
            result = _sub_options(_refusal_raised(first.subscribe_response).result)
        except TimeoutError:
            call.cancel()
            raise pt.ProxyCallError("timeout", f"no answer within {self.config.timeout}s") from None
        except grpc.aio.AioRpcError as e:
            call.cancel()
            raise self._failed(e) from None
        except BaseException:
            call.cancel()
            raise
        return call, result

    async def sub_refresh(self, req: pt.SubRefreshRequest) -> pt.SubRefreshResult:
        msg = pb.SubRefreshRequest(channel=req.channel, **self._body(req))
        resp = await self._call(self._client().SubRefresh, req, msg)
        if not resp.HasField("result"):
            return pt.SubRefreshResult(expired=True)
        r = resp.result
        return pt.SubRefreshResult(expired=r.expired, expire_at=r.expire_at, info=_bytes(r.info, r.b64info))


def _refusal_raised(response: Any) -> Any:
    """The response, unless it carries the backend's refusal: that is raised as the client's error/disconnect."""
    # Some responses (SharedPollRefresh's) have no disconnect field.
    if "disconnect" in response.DESCRIPTOR.fields_by_name and response.HasField("disconnect"):
        raise DisconnectError(Disconnect(response.disconnect.code, response.disconnect.reason))
    if response.HasField("error"):
        raise ReplyError(Error(response.error.code, response.error.message, response.error.temporary))
    return response


def _bytes(raw: bytes, b64: str) -> bytes | None:
    if b64:
        try:
            return base64.b64decode(b64, validate=True)
        except ValueError:
            raise pt.ProxyCallError("bad_response", "b64 field is not base64") from None
    return raw or None


def _sub_options(o: Any) -> pt.SubscribeResult:
    override = None
    if o.HasField("override"):
        v = o.override

        def flag(name: str) -> bool | None:
            return bool(getattr(v, name).value) if v.HasField(name) else None

        override = SubscribeOverride(presence=flag("presence"), join_leave=flag("join_leave"),
                                     force_push_join_leave=flag("force_push_join_leave"),
                                     force_positioning=flag("force_positioning"),
                                     force_recovery=flag("force_recovery"))
    return pt.SubscribeResult(expire_at=o.expire_at, info=_bytes(o.info, o.b64info),
                                  data=_bytes(o.data, o.b64data), override=override)
