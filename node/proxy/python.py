"""In-process handlers: an application that embeds Fugato registers async callables for the proxy hooks, with
the same request and result types as the HTTP and GRPC proxies (``node.proxy.types``)::

    handlers = Handlers()

    @handlers.on_connect
    async def connect(req: ConnectRequest) -> ConnectResult:
        return ConnectResult(user="42")

    app = build_app(config, handlers=handlers)

(a complete example: ``examples/embedded.py``, shown in the README).

A registered connect or refresh handler is used as ``client.proxy.connect`` / ``refresh`` would be (no endpoint
needed). The channel and RPC hooks stay switched per namespace (``subscribe_proxy_enabled``, ``proxy_enabled``,
``map.publish_proxy_enabled``, ``shared_poll`` subscriptions…) and take the handler registered under the
namespace's proxy name (``"default"`` unless given). The map write hooks take ``map_writes.MapWriteRequest`` and
answer ``MapWriteResult``; the shared poll refresh takes ``shared_poll.SharedPollRefreshRequest`` and answers
``node.sharedpoll.refresh.Answer``; a subscribe stream handler is an async generator (``python_stream.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

from node.proxy import python_stream
from node.proxy import types as pt
from node.proxy.base import ProxyBackend
from node.proxy.config import DEFAULT_PROXY_NAME

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
HOOKS: Final = ("connect", "refresh", "subscribe", "publish", "rpc", "sub_refresh", "subscribe_stream", "map_publish",
                 "map_remove", "shared_poll_refresh")


class Handlers:
    """The callables an application registered, by hook and proxy name."""

    def __init__(self, *, timeout: float = 1.0, http_headers: tuple[str, ...] = ()) -> None:
        self.timeout = timeout  # an in-process handler is bounded like a remote proxy
        self.http_headers = http_headers  # request headers the handlers get in ``req.headers`` (lower-cased)
        self._fns: dict[tuple[str, str], Callable[..., Any]] = {}

    def register(self, hook: str, fn: F, name: str = DEFAULT_PROXY_NAME) -> F:
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r} (one of {', '.join(HOOKS)})")
        self._fns[hook, name] = fn
        return fn

    def has(self, hook: str, name: str = DEFAULT_PROXY_NAME) -> bool:
        return (hook, name) in self._fns

    def get(self, hook: str, name: str) -> Callable[..., Any] | None:
        return self._fns.get((hook, name))

    def names(self) -> set[str]:
        return {name for _, name in self._fns}

    def on_connect(self, fn: Callable[[pt.ConnectRequest], Awaitable[pt.ConnectResult | None]]) -> Any:
        return self.register("connect", fn)

    def on_refresh(self, fn: Callable[[pt.RefreshRequest], Awaitable[pt.RefreshResult | None]]) -> Any:
        return self.register("refresh", fn)

    def on_subscribe(self, fn: Callable[[pt.SubscribeRequest], Awaitable[pt.SubscribeResult]],
                     name: str = DEFAULT_PROXY_NAME) -> Any:
        return self.register("subscribe", fn, name)

    def on_publish(self, fn: Callable[[pt.PublishRequest], Awaitable[pt.PublishResult]], name: str = DEFAULT_PROXY_NAME
                   ) -> Any:
        return self.register("publish", fn, name)

    def on_rpc(self, fn: Callable[[pt.RPCRequest], Awaitable[pt.RPCResult]], name: str = DEFAULT_PROXY_NAME) -> Any:
        return self.register("rpc", fn, name)

    def on_map_publish(self, fn: Callable[[Any], Awaitable[Any]], name: str = DEFAULT_PROXY_NAME) -> Any:
        """``fn(MapWriteRequest) -> MapWriteResult`` (node.proxy.map_writes)."""
        return self.register("map_publish", fn, name)

    def on_map_remove(self, fn: Callable[[Any], Awaitable[Any]], name: str = DEFAULT_PROXY_NAME) -> Any:
        """``fn(MapWriteRequest) -> MapWriteResult`` (node.proxy.map_writes; ``data`` is None)."""
        return self.register("map_remove", fn, name)

    def on_shared_poll_refresh(self, fn: Callable[[Any], Awaitable[Any]], name: str = DEFAULT_PROXY_NAME) -> Any:
        """``fn(SharedPollRefreshRequest) -> Answer`` (node.proxy.shared_poll, node.sharedpoll.refresh)."""
        return self.register("shared_poll_refresh", fn, name)

    def on_subscribe_stream(self, fn: Callable[..., AsyncIterator[Any]], name: str = DEFAULT_PROXY_NAME) -> Any:
        """``fn(SubscribeRequest, incoming)``: an async generator whose first item is the ``SubscribeResult`` and
        every later one a publication (``bytes`` or ``StreamPublication``); ``incoming`` yields the data of the
        client's publishes in a bidirectional stream (it ends at once in a unidirectional one)."""
        self._fns["subscribe_stream", name] = fn  # an async generator function, not a coroutine function
        return fn

    def on_sub_refresh(self, fn: Callable[[pt.SubRefreshRequest], Awaitable[pt.SubRefreshResult]],
                       name: str = DEFAULT_PROXY_NAME) -> Any:
        return self.register("sub_refresh", fn, name)


class PythonProxy(ProxyBackend):
    """The handlers registered under one proxy name, as a backend."""

    def __init__(self, handlers: Handlers, name: str) -> None:
        self._handlers = handlers
        self._name = name

    @property
    def kind(self) -> str:
        return "python"

    async def run(self, hook: str, req: Any) -> Any:
        """Call the handler of ``hook`` (the hooks outside ``ProxyBackend``: map writes, shared poll refresh)."""
        return await self._run(hook, req)

    async def _run(self, hook: str, req: Any) -> Any:
        fn = self._handlers.get(hook, self._name)
        if fn is None:
            raise pt.ProxyCallError("unavailable", f"no in-process {hook} handler named {self._name!r}")
        return await fn(req)

    async def connect(self, req: pt.ConnectRequest) -> pt.ConnectResult | None:
        result: pt.ConnectResult | None = await self._run("connect", req)
        return result

    async def refresh(self, req: pt.RefreshRequest) -> pt.RefreshResult | None:
        result: pt.RefreshResult | None = await self._run("refresh", req)
        return result

    async def subscribe(self, req: pt.SubscribeRequest) -> pt.SubscribeResult:
        return await self._run("subscribe", req) or pt.SubscribeResult()

    async def publish(self, req: pt.PublishRequest) -> pt.PublishResult:
        return await self._run("publish", req) or pt.PublishResult()

    async def rpc(self, req: pt.RPCRequest) -> pt.RPCResult:
        return await self._run("rpc", req) or pt.RPCResult()

    async def sub_refresh(self, req: pt.SubRefreshRequest) -> pt.SubRefreshResult:
        return await self._run("sub_refresh", req) or pt.SubRefreshResult(expired=True)

    async def open_stream(self, req: pt.SubscribeRequest, bidirectional: bool) -> tuple[Any, pt.SubscribeResult]:
        """Start the subscribe stream handler (python_stream.py), as ``GrpcProxy.open_stream`` opens a stream."""
        fn = self._handlers.get("subscribe_stream", self._name)
        if fn is None:
            raise pt.ProxyCallError("unavailable", f"no in-process subscribe_stream handler named {self._name!r}")
        return await python_stream.open_stream(fn, req, bidirectional)

    async def close(self) -> None:
        return None
