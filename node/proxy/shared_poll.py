"""The shared poll refresh proxy: one call asks the backend for the current data of a batch of tracked keys
(``channel.proxy.shared_poll_refresh``, or the named proxy of the namespace's ``shared_poll.proxy_name``).

HTTP: POST ``{"channel", "items": [{"key"[, "version"]}]}``, answered ``{"result": {"items": [{"key", "data",
"version", "removed", "prev_data"}], "epoch"}}`` or ``{"error": …}``. GRPC: ``CentrifugoProxy.SharedPollRefresh``.
In-process (``Handlers.on_shared_poll_refresh``): the handler takes a ``SharedPollRefreshRequest`` and answers an
``Answer``. Versions are sent in versioned mode only, as Centrifugo does. A garbled answer is a failed call like
a down backend: the refresh cycle is skipped and the next one tries again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.proxy import types as pt
from node.proxy.grpc import GrpcProxy
from node.proxy.http import HttpProxy, payload, raw_json
from node.proxy.manager import SHARED_POLL_REFRESH, Proxy
from node.proxy.proto import proxy_pb2 as pb
from node.proxy.python import PythonProxy
from node.sharedpoll.refresh import Answer, Item

HOOK = SHARED_POLL_REFRESH
# A refresh call is about no connection: no client fields, no forwarded headers.
_NO_CLIENT = pt.ProxyRequest(client="", transport="")


@dataclass(frozen=True, slots=True)
class SharedPollRefreshRequest:
    """One refresh call: the tracked ``(key, version)`` pairs of a channel (versions are 0 unless ``versioned``).
    What an in-process handler gets; ``client`` is empty (a refresh is about no connection)."""

    channel: str
    items: Sequence[tuple[str, int]]
    versioned: bool
    client: str = ""


async def refresh(proxy: Proxy, channel: str, items: Sequence[tuple[str, int]], *, versioned: bool) -> Answer:
    """One refresh call; ``ReplyError`` when the backend refused or gave no usable answer."""
    return await proxy.call(HOOK, lambda req: _call(proxy, req), SharedPollRefreshRequest(channel, items, versioned))


async def _call(proxy: Proxy, req: SharedPollRefreshRequest) -> Answer:
    backend = proxy.backend
    if isinstance(backend, HttpProxy):
        return await _http(backend, req)
    if isinstance(backend, GrpcProxy):
        return await _grpc(backend, req)
    if isinstance(backend, PythonProxy):
        answer = await backend.run(HOOK, req)
        if not isinstance(answer, Answer):
            raise pt.ProxyCallError("bad_response", f"the shared poll refresh handler returned {type(answer).__name__}")
        return answer
    raise pt.ProxyCallError("unsupported", f"{backend.kind} backends have no shared poll refresh")


async def _http(backend: HttpProxy, req: SharedPollRefreshRequest) -> Answer:
    items = [{"key": k, "version": v} for k, v in req.items] if req.versioned else [{"key": k} for k, _ in req.items]
    result = await backend.post(_NO_CLIENT, {"channel": req.channel, "items": items}) or {}
    epoch = result.get("epoch", "")
    raw_items = result.get("items", [])
    if not isinstance(epoch, str) or not isinstance(raw_items, list):
        raise pt.ProxyCallError("bad_response", "items is not a list or epoch not a string")
    return Answer([_json_item(it) for it in raw_items], epoch)


def _json_item(obj: Any) -> Item:
    if not isinstance(obj, dict):
        raise pt.ProxyCallError("bad_response", "an item is not an object")
    key, version, removed = obj.get("key"), obj.get("version", 0) or 0, obj.get("removed", False) or False
    if not isinstance(key, str) or not key or not isinstance(version, int) or isinstance(version, bool) \
            or version < 0 or not isinstance(removed, bool):
        raise pt.ProxyCallError("bad_response", "an item needs a key, a version >= 0 and a boolean removed")
    data = payload(obj, "data")
    # prev_data is raw JSON only, as in Centrifugo's proxy protocol (no b64 form).
    return Item(key, data, version, removed, raw_json(obj, "prev_data"))


async def _grpc(backend: GrpcProxy, req: SharedPollRefreshRequest) -> Answer:
    msg = pb.SharedPollRefreshRequest(channel=req.channel, items=[
        pb.SharedPollRefreshItem(key=k, version=v if req.versioned else 0) for k, v in req.items])
    resp = await backend._call(backend._client().SharedPollRefresh, _NO_CLIENT, msg)
    r = resp.result
    return Answer([Item(it.key, None if it.removed or not it.data else it.data, it.version, it.removed,
                        it.prev_data or None) for it in r.items], r.epoch)
