"""Which backend answers which hook, and the one place a failed call becomes the client's answer.

``Proxies`` is built once per node from the configuration (and the application's in-process ``Handlers``):
``client.proxy.connect`` / ``refresh``; per namespace the proxy named by ``subscribe_proxy_name`` etc.
(``"default"`` = ``channel.proxy.<hook>``, anything else an entry of ``proxies``); per RPC namespace
``proxy_name`` (``"default"`` = ``rpc.proxy``). One backend object per distinct endpoint, so hooks sharing a
named proxy share its connection pool.

A call that gets no usable answer (down, slow, 5xx, garbage) logs one line, counts
``centrifugo_proxy_call_outcomes_total{name,type,outcome}`` and gives the hook's fallback: error 100 for
connect, subscribe, publish and RPC (the SDK retries), one more minute for refresh and sub_refresh (as
Centrifugo does, so a backend blip does not cut every expiring connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from node.config import ChannelOptions, Config
from node.errors import (
    DISCONNECT_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_METHOD_NOT_FOUND,
    ConfigError,
    DisconnectError,
    ReplyError,
)
from node.models import Identity
from node.proxy.base import ProxyBackend
from node.proxy.config import DEFAULT_PROXY_NAME, ProxyConfig, RpcOptions
from node.proxy.grpc import GrpcProxy
from node.proxy.http import HttpProxy
from node.proxy.python import Handlers, PythonProxy
from node.proxy.types import NO_HEADERS, ProxyCallError

if TYPE_CHECKING:
    from node.transport import Transport

logger = logging.getLogger(__name__)

T = TypeVar("T")
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CHANNEL_HOOKS: Final = ("subscribe", "publish", "sub_refresh", "subscribe_stream")
SHARED_POLL_REFRESH: Final = "shared_poll_refresh"
MAP_HOOKS: Final = ("publish", "remove")  # map.<hook>_proxy_enabled: hooks "map_publish", "map_remove"


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter("proxy_call_outcomes", "Proxy calls by proxy name, hook and outcome.",
                                ["name", "type", "outcome"], namespace="centrifugo", registry=registry)
        self.duration = Histogram("proxy_call_duration_seconds", "Proxy call duration.", ["protocol", "type", "name"],
                                  namespace="centrifugo", registry=registry, buckets=BUCKETS)


class HookMetrics:
    """One hook's series of one proxy, resolved once: ``labels()`` per call cost more than the observation."""

    __slots__ = ("_counters", "_name", "_outcomes", "duration", "hook")

    def __init__(self, metrics: ProxyMetrics, name: str, kind: str, hook: str) -> None:
        self._outcomes = metrics.outcomes
        self._name = name
        self.hook = hook
        self.duration = metrics.duration.labels(kind, hook, name)
        self._counters: dict[str, Counter] = {}

    def outcome(self, outcome: str) -> Counter:
        counter = self._counters.get(outcome)
        if counter is None:
            counter = self._counters[outcome] = self._outcomes.labels(self._name, self.hook, outcome)
        return counter


class ProxyClient(Identity, Protocol):
    """What a request is built from: a connection (``client.Client``)."""

    protocol: str
    transport: Transport
    meta: bytes | None
    proxy_headers: Mapping[str, str] | None
    emulated_headers: Mapping[str, str] | None


class Proxy:
    """A backend under a name, with the settings that shape its requests."""

    __slots__ = ("_hooks", "backend", "config", "emulated", "headers", "metrics", "name", "timeout")

    def __init__(self, name: str, backend: ProxyBackend, config: ProxyConfig | None, timeout: float,
                 metrics: ProxyMetrics, headers: tuple[str, ...] = ()) -> None:
        self.metrics = metrics
        self.name = name
        self.backend = backend
        self.config = config
        self.timeout = timeout
        names = (*config.http_headers, *config.grpc_metadata) if config is not None else headers
        self.headers = frozenset(h.lower() for h in names)
        # Headers the client itself put in its connect command: forwarded only when listed here (Centrifugo
        # v6.9: they are client-controlled, never taken for transport headers of the same name).
        self.emulated = frozenset(h.lower() for h in config.emulated_headers) if config is not None else frozenset()
        self._hooks: dict[str, HookMetrics] = {}

    @property
    def encoding(self) -> str:
        return "binary" if self.config is not None and self.config.binary_encoding else "json"

    def request_fields(self, client: ProxyClient) -> dict[str, Any]:
        """The fields of every request about ``client``."""
        headers: Mapping[str, str] = NO_HEADERS
        if self.emulated and client.emulated_headers:
            headers = {k: v for k, v in client.emulated_headers.items() if k in self.emulated}
        if self.headers and client.proxy_headers:
            # A transport header wins over an emulated one of the same name (the emulated one is the fallback).
            headers = {**headers, **{k: v for k, v in client.proxy_headers.items() if k in self.headers}}
        meta = client.meta if self.config is None or self.config.include_connection_meta else None
        return {"client": client.id, "transport": client.transport.name, "protocol": client.protocol,
                "encoding": self.encoding, "user": client.user, "meta": meta, "headers": headers}

    # --- calling ------------------------------------------------------------------------------------------

    async def call(self, hook: str, fn: Callable[[Any], Awaitable[T]], request: Any,
                   fallback: Callable[[], T] | None = None) -> T:
        """Call one hook; a refusal by the backend is raised as it came, a failed call becomes ``fallback()``
        (or error 100, or what ``status_to_code_transforms`` maps the HTTP status to)."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            if self.config is not None:  # a remote backend: the HTTP pool's / GRPC's own deadline bounds the call
                return await fn(request)
            return await _bounded(fn(request), self.timeout)
        except ReplyError:
            outcome = "error"
            raise
        except DisconnectError:
            outcome = "disconnect"
            raise
        except ProxyCallError as e:
            outcome = e.outcome
            logger.error("%s proxy %r (%s) failed for client %s: %s", hook, self.name, self.backend.kind,
                         getattr(request, "client", ""), e)
            if e.reply is not None:
                raise e.reply from None
        except Exception as e:  # an in-process handler's bug is a failed call, not a crashed connection
            outcome = "handler_error"
            logger.error("%s proxy %r (%s) raised for client %s: %r", hook, self.name, self.backend.kind,
                         getattr(request, "client", ""), e)
        finally:
            series = self._hooks.get(hook)
            if series is None:
                series = self._hooks[hook] = HookMetrics(self.metrics, self.name, self.backend.kind, hook)
            series.outcome(outcome).inc()
            series.duration.observe(time.perf_counter() - started)
        if fallback is not None:
            return fallback()
        raise ReplyError(ERROR_INTERNAL)


def _backend(config: ProxyConfig) -> ProxyBackend:
    return HttpProxy(config) if config.is_http else GrpcProxy(config)


class Proxies:
    def __init__(self, config: Config, registry: CollectorRegistry, handlers: Handlers | None = None) -> None:
        self.metrics = ProxyMetrics(registry)
        self._handlers = handlers
        self._named = {p.name: p for p in config.proxies}
        self._built: dict[int, Proxy] = {}  # id(config) -> Proxy: one backend per configured endpoint
        self.connect = self._client_hook("connect", config.client.proxy.connect)
        self.refresh = self._client_hook("refresh", config.client.proxy.refresh)
        self._channel: dict[tuple[str, str], Proxy] = {}
        self._rpc: dict[str, Proxy] = {}
        self.rpc_boundary = config.rpc.namespace_boundary
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Resolve the per-namespace hooks (at start and when channel options are reloaded)."""
        channel: dict[tuple[str, str], Proxy] = {}
        for ns in (config.channel.without_namespace, *config.channel.namespaces):
            for hook in CHANNEL_HOOKS:
                if getattr(ns, f"{hook}_proxy_enabled"):
                    name = getattr(ns, f"{hook}_proxy_name") or DEFAULT_PROXY_NAME
                    channel[hook, name] = self._resolve(hook, name, getattr(config.channel.proxy, hook))
            for hook in MAP_HOOKS:  # a map namespace's client writes, decided by the backend
                if getattr(ns.map, f"{hook}_proxy_enabled"):
                    name = getattr(ns.map, f"{hook}_proxy_name") or DEFAULT_PROXY_NAME
                    channel[f"map_{hook}", name] = self._resolve(f"map_{hook}", name,
                                                                 getattr(config.channel.proxy, f"map_{hook}"))
            if ns.subscription_type == "shared_poll":  # polled through its refresh proxy: one is required
                name = ns.shared_poll.proxy_name or DEFAULT_PROXY_NAME
                channel[SHARED_POLL_REFRESH, name] = self._resolve(SHARED_POLL_REFRESH, name,
                                                                   config.channel.proxy.shared_poll_refresh)
        self._channel = channel
        self._rpc_namespaces: dict[str, RpcOptions] = {ns.name: ns for ns in config.rpc.namespaces}
        self._rpc_default = config.rpc.without_namespace
        rpc: dict[str, Proxy] = {}
        for opts in (config.rpc.without_namespace, *config.rpc.namespaces):
            if opts.proxy_enabled:
                name = opts.proxy_name or DEFAULT_PROXY_NAME
                rpc[name] = self._resolve("rpc", name, config.rpc.proxy)
        self._rpc = rpc
        all_proxies = [p for p in (self.connect, self.refresh, *channel.values(), *rpc.values()) if p is not None]
        self.header_names = frozenset().union(*(p.headers for p in all_proxies))
        self.emulated_names = frozenset().union(*(p.emulated for p in all_proxies))

    def _client_hook(self, hook: str, config: Any) -> Proxy | None:
        if self._handlers is not None and self._handlers.has(hook):
            return self._python(DEFAULT_PROXY_NAME, self._handlers)
        if not config.enabled:
            return None
        return self._proxy(DEFAULT_PROXY_NAME, config)

    def _python(self, name: str, handlers: Handlers) -> Proxy:
        return Proxy(name, PythonProxy(handlers, name), None, handlers.timeout, self.metrics, handlers.http_headers)

    def _resolve(self, hook: str, name: str, default: ProxyConfig) -> Proxy:
        if self._handlers is not None and self._handlers.has(hook, name):
            return self._python(name, self._handlers)
        config = default if name == DEFAULT_PROXY_NAME else self._named.get(name)
        if config is None or not config.endpoint:
            raise ConfigError(f"{hook} proxy {name!r} is enabled in a namespace but not configured")
        if hook == "subscribe_stream" and config.is_http:
            raise ConfigError(f"subscribe stream proxy {name!r}: only GRPC endpoints are supported")
        return self._proxy(name, config)

    def _proxy(self, name: str, config: ProxyConfig) -> Proxy:
        proxy = self._built.get(id(config))
        if proxy is None:
            proxy = self._built[id(config)] = Proxy(name, _backend(config), config, config.timeout, self.metrics)
        return proxy

    async def close(self) -> None:
        for proxy in self._built.values():
            await proxy.backend.close()

    # --- lookups ------------------------------------------------------------------------------------------

    def for_channel(self, hook: str, ns: ChannelOptions) -> Proxy | None:
        if not getattr(ns, f"{hook}_proxy_enabled"):
            return None
        return self._channel.get((hook, getattr(ns, f"{hook}_proxy_name") or DEFAULT_PROXY_NAME))

    def for_map_write(self, ns: ChannelOptions, *, remove: bool) -> Proxy | None:
        """The proxy deciding a client's map publish (or remove) in ``ns``; None where the namespace has none."""
        hook = "remove" if remove else "publish"
        if not getattr(ns.map, f"{hook}_proxy_enabled"):
            return None
        return self._channel.get((f"map_{hook}", getattr(ns.map, f"{hook}_proxy_name") or DEFAULT_PROXY_NAME))

    def for_shared_poll(self, ns: ChannelOptions) -> Proxy | None:
        """The refresh proxy of a ``shared_poll`` namespace."""
        return self._channel.get((SHARED_POLL_REFRESH, ns.shared_poll.proxy_name or DEFAULT_PROXY_NAME))

    def for_rpc(self, method: str) -> Proxy | None:
        """The RPC proxy of ``method``'s RPC namespace; None when that namespace has none."""
        ns_name, sep, _ = method.partition(self.rpc_boundary)
        opts = self._rpc_namespaces.get(ns_name) if sep else self._rpc_default
        if opts is None:
            raise ReplyError(ERROR_METHOD_NOT_FOUND)
        if not opts.proxy_enabled:
            return None
        return self._rpc.get(opts.proxy_name or DEFAULT_PROXY_NAME)

    def pick_emulated(self, headers: object) -> dict[str, str] | None:
        """The connect command's ``headers`` some proxy forwards (lower-cased names); None when none is wanted.
        Not a map of strings: 3501 bad request, as centrifuge's decoder answers."""
        if not self.emulated_names or not headers:
            return None
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise DisconnectError(DISCONNECT_BAD_REQUEST)
        picked = {k.lower(): v for k, v in headers.items() if k.lower() in self.emulated_names}
        return picked or None

    def pick_headers(self, headers: Mapping[str, str] | None) -> dict[str, str] | None:
        """The request headers some proxy forwards (lower-cased names); None when none is wanted."""
        if not self.header_names or not headers:
            return None
        picked = {k.lower(): v for k, v in headers.items() if k.lower() in self.header_names}
        return picked or None


async def _bounded(aw: Awaitable[T], timeout: float) -> T:
    """The backend's own deadline bounds a remote call; this one also bounds in-process handlers (with a margin,
    so a remote timeout is reported as the backend's)."""
    try:
        async with asyncio.timeout(timeout * 1.5 + 0.05):
            return await aw
    except TimeoutError:
        raise ProxyCallError("timeout", f"no answer within {timeout}s") from None
