"""In-process handlers: an application that embeds Fugato registers async callables for the proxy hooks, with
the same request and result types as the HTTP and GRPC proxies (``node.proxy.types``)::

    handlers = Handlers()

    @handlers.on_connect
    async def connect(req: ConnectRequest) -> ConnectResult:
        return ConnectResult(user="42")

    app = build_app(config, handlers=handlers)

(a complete example: ``examples/embedded.py``, shown in the README).

A registered connect or refresh handler is used as ``client.proxy.connect`` / ``refresh`` would be (no endpoint
needed). The channel and RPC hooks stay switched per namespace (``subscribe_proxy_enabled``, ``proxy_enabled``…)
and take the handler registered under the namespace's proxy name (``"default"`` unless given).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from node.proxy.base import ProxyBackend
from node.proxy.config import DEFAULT_PROXY_NAME
from node.proxy.types import (
    ConnectRequest,
    ConnectResult,
    ProxyCallError,
    PublishRequest,
    PublishResult,
    RefreshRequest,
    RefreshResult,
    RPCRequest,
    RPCResult,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribeRequest,
    SubscribeResult,
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
HOOKS: Final = ("connect", "refresh", "subscribe", "publish", "rpc", "sub_refresh")


class Handlers:
    """The callables an application registered, by hook and proxy name."""

    def __init__(self, *, timeout: float = 1.0, http_headers: tuple[str, ...] = ()) -> None:
        self.timeout = timeout  # an in-process handler is bounded like a remote proxy
        self.http_headers = http_headers  # request headers the handlers get in ``req.headers`` (lower-cased)
        self._fns: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {}

    def register(self, hook: str, fn: F, name: str = DEFAULT_PROXY_NAME) -> F:
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r} (one of {', '.join(HOOKS)})")
        self._fns[hook, name] = fn
        return fn

    def has(self, hook: str, name: str = DEFAULT_PROXY_NAME) -> bool:
        return (hook, name) in self._fns

    def get(self, hook: str, name: str) -> Callable[..., Awaitable[Any]] | None:
        return self._fns.get((hook, name))

    def names(self) -> set[str]:
        return {name for _, name in self._fns}

    def on_connect(self, fn: Callable[[ConnectRequest], Awaitable[ConnectResult | None]]) -> Any:
        return self.register("connect", fn)

    def on_refresh(self, fn: Callable[[RefreshRequest], Awaitable[RefreshResult | None]]) -> Any:
        return self.register("refresh", fn)

    def on_subscribe(self, fn: Callable[[SubscribeRequest], Awaitable[SubscribeResult]], name: str = DEFAULT_PROXY_NAME
                     ) -> Any:
        return self.register("subscribe", fn, name)

    def on_publish(self, fn: Callable[[PublishRequest], Awaitable[PublishResult]], name: str = DEFAULT_PROXY_NAME
                   ) -> Any:
        return self.register("publish", fn, name)

    def on_rpc(self, fn: Callable[[RPCRequest], Awaitable[RPCResult]], name: str = DEFAULT_PROXY_NAME) -> Any:
        return self.register("rpc", fn, name)

    def on_sub_refresh(self, fn: Callable[[SubRefreshRequest], Awaitable[SubRefreshResult]],
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

    async def _run(self, hook: str, req: Any) -> Any:
        fn = self._handlers.get(hook, self._name)
        if fn is None:
            raise ProxyCallError("unavailable", f"no in-process {hook} handler named {self._name!r}")
        return await fn(req)

    async def connect(self, req: ConnectRequest) -> ConnectResult | None:
        result: ConnectResult | None = await self._run("connect", req)
        return result

    async def refresh(self, req: RefreshRequest) -> RefreshResult | None:
        result: RefreshResult | None = await self._run("refresh", req)
        return result

    async def subscribe(self, req: SubscribeRequest) -> SubscribeResult:
        return await self._run("subscribe", req) or SubscribeResult()

    async def publish(self, req: PublishRequest) -> PublishResult:
        return await self._run("publish", req) or PublishResult()

    async def rpc(self, req: RPCRequest) -> RPCResult:
        return await self._run("rpc", req) or RPCResult()

    async def sub_refresh(self, req: SubRefreshRequest) -> SubRefreshResult:
        return await self._run("sub_refresh", req) or SubRefreshResult(expired=True)

    async def close(self) -> None:
        return None
