"""The map publish and map remove proxies (a map namespace's ``map.publish_proxy_enabled`` /
``map.remove_proxy_enabled``; ``channel.proxy.map_publish`` / ``map_remove``, or the named proxy of
``map.publish_proxy_name`` / ``remove_proxy_name``): a client's map write goes to the backend first, which allows
it (optionally replacing the key and data, adding tags, a key mode, an idempotency key, a version), refuses it
with an error, or disconnects the client. The namespace's ``map.allow_*`` options are then not consulted: the
backend decides.

HTTP: POST ``{client, transport, protocol, encoding, user, channel, key, data | b64data[, meta]}``, answered
``{"result": {key, data | b64data, tags, key_mode, idempotency_key, delta, version, version_epoch}}`` (remove:
``{key, tags, idempotency_key}``) or ``{"error": …}`` / ``{"disconnect": …}``. GRPC:
``CentrifugoProxy.MapPublish`` / ``MapRemove``. In-process (``Handlers.on_map_publish`` / ``on_map_remove``): the
handler takes a ``MapWriteRequest`` and answers a ``MapWriteResult`` (None: allowed as sent). A garbled answer or
a backend that cannot be reached is error 100 for the client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from node.models import kw_record
from node.proxy import types as pt
from node.proxy.grpc import GrpcProxy, _bytes
from node.proxy.http import HttpProxy, _field, payload
from node.proxy.manager import Proxy, ProxyClient
from node.proxy.proto import proxy_pb2 as pb
from node.proxy.python import PythonProxy

MAP_PUBLISH: Final = "map_publish"
MAP_REMOVE: Final = "map_remove"


@kw_record
class MapWriteRequest(pt.ProxyRequest):
    channel: str
    key: str
    data: bytes | None = None  # None for a remove


@kw_record
class MapWriteResult:
    """The backend's decision; empty fields keep what the client sent (or the default behaviour)."""

    key: str = ""
    data: bytes | None = None
    tags: Mapping[str, str] | None = None
    key_mode: str = ""
    idempotency_key: str = ""
    delta: bool = False
    version: int = 0
    version_epoch: str = ""


async def map_write(client: ProxyClient, proxy: Proxy, hook: str, channel: str, key: str,
                    data: bytes | None) -> MapWriteResult:
    """Ask the backend about one client map write (``hook``: MAP_PUBLISH or MAP_REMOVE)."""
    req = MapWriteRequest(**proxy.request_fields(client), channel=channel, key=key, data=data)
    return await proxy.call(hook, lambda r: _call(proxy, hook, r), req)


async def _call(proxy: Proxy, hook: str, req: MapWriteRequest) -> MapWriteResult:
    backend = proxy.backend
    if isinstance(backend, HttpProxy):
        return await _http(backend, req)
    if isinstance(backend, GrpcProxy):
        return await _grpc(backend, hook, req)
    if isinstance(backend, PythonProxy):
        result = await backend.run(hook, req)
        if result is not None and not isinstance(result, MapWriteResult):
            raise pt.ProxyCallError("bad_response", f"the {hook} handler returned {type(result).__name__}")
        return result or MapWriteResult()
    raise pt.ProxyCallError("unsupported", f"{backend.kind} backends have no {hook} hook")


async def _http(backend: HttpProxy, req: MapWriteRequest) -> MapWriteResult:
    body = backend._body(req, req.data)
    body["channel"], body["key"] = req.channel, req.key
    r: Mapping[str, Any] = await backend.post(req, body) or {}
    version = _field(r, "version", int, 0)
    if version < 0:
        raise pt.ProxyCallError("bad_response", "version is negative")
    return MapWriteResult(
        key=_field(r, "key", str, ""), data=payload(r, "data") if req.data is not None else None,
        tags=_field(r, "tags", dict, None), key_mode=_field(r, "key_mode", str, ""),
        idempotency_key=_field(r, "idempotency_key", str, ""), delta=_field(r, "delta", bool, False),
        version=version, version_epoch=_field(r, "version_epoch", str, ""))


async def _grpc(backend: GrpcProxy, hook: str, req: MapWriteRequest) -> MapWriteResult:
    fields = backend._body(req, req.data)
    fields["channel"], fields["key"] = req.channel, req.key
    stub = backend._client()
    if hook == MAP_REMOVE:
        resp = await backend._call(stub.MapRemove, req, pb.MapRemoveRequest(**fields))
        res = resp.result
        return MapWriteResult(key=res.key, tags=dict(res.tags) or None, idempotency_key=res.idempotency_key)
    resp = await backend._call(stub.MapPublish, req, pb.MapPublishRequest(**fields))
    res = resp.result
    data = _bytes(res.data, res.b64data) if resp.HasField("result") else None
    return MapWriteResult(key=res.key, data=data, tags=dict(res.tags) or None, key_mode=res.key_mode,
                          idempotency_key=res.idempotency_key, delta=res.delta, version=res.version,
                          version_epoch=res.version_epoch)
