"""The client session's side of the proxies: builds each hook's request from a connection and a command, calls
the backend through ``Proxies.call`` and hands back the result for the policy and commands to apply."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from node.errors import DISCONNECT_BAD_REQUEST, DisconnectError
from node.protocol import codec
from node.proxy import types as pt

if TYPE_CHECKING:
    from node.proxy.manager import Proxy, ProxyClient

# A refresh that fails (backend down) gives the connection or subscription this much more time, as Centrifugo.
RETRY_REFRESH_AFTER: Final = 60

__all__ = ("connect", "publish", "refresh", "rpc", "sub_refresh", "subscribe")


def payload(params: Mapping[str, Any], key: str = "data") -> bytes | None:
    """A command's payload as bytes: raw JSON for JSON clients, the bytes themselves for protobuf ones."""
    value = params.get(key)
    if value is None:
        return None
    return value if isinstance(value, bytes) else codec.raw(value)


def token(params: Mapping[str, Any]) -> str:
    """A subscribe command's subscription token ("" without one)."""
    return _str(params, "token")


def _str(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key) or ""
    if not isinstance(value, str):
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    return value


async def connect(client: ProxyClient, proxy: Proxy, params: Mapping[str, Any]) -> pt.ConnectResult | None:
    channels = params.get("channels") or ()
    if not isinstance(channels, list | tuple) or not all(isinstance(c, str) for c in channels):
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    req = pt.ConnectRequest(**proxy.request_fields(client), data=payload(params), name=_str(params, "name"),
                         version=_str(params, "version"), channels=tuple(channels))
    return await proxy.call("connect", proxy.backend.connect, req)


async def refresh(client: ProxyClient, proxy: Proxy) -> pt.RefreshResult:
    """The server-side refresh of an expiring connection; no result from the backend means expired."""
    req = pt.RefreshRequest(**proxy.request_fields(client))
    result = await proxy.call("refresh", proxy.backend.refresh, req, _refresh_later)
    return result if result is not None else pt.RefreshResult(expired=True)


def _refresh_later() -> pt.RefreshResult:
    return pt.RefreshResult(expire_at=int(time.time()) + RETRY_REFRESH_AFTER)


async def subscribe(client: ProxyClient, proxy: Proxy, channel: str, params: Mapping[str, Any]) -> pt.SubscribeResult:
    req = pt.SubscribeRequest(**proxy.request_fields(client), channel=channel, token=token(params),
                           data=payload(params))
    return await proxy.call("subscribe", proxy.backend.subscribe, req)


async def publish(client: ProxyClient, proxy: Proxy, channel: str, data: bytes) -> pt.PublishResult:
    req = pt.PublishRequest(**proxy.request_fields(client), channel=channel, data=data)
    return await proxy.call("publish", proxy.backend.publish, req)


async def rpc(client: ProxyClient, proxy: Proxy, method: str, data: bytes | None) -> pt.RPCResult:
    req = pt.RPCRequest(**proxy.request_fields(client), method=method, data=data)
    return await proxy.call("rpc", proxy.backend.rpc, req)


async def sub_refresh(client: ProxyClient, proxy: Proxy, channel: str) -> pt.SubRefreshResult:
    req = pt.SubRefreshRequest(**proxy.request_fields(client), channel=channel)
    return await proxy.call("sub_refresh", proxy.backend.sub_refresh, req,
                                          lambda: pt.SubRefreshResult(expire_at=int(time.time()) + RETRY_REFRESH_AFTER))
