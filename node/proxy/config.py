"""Proxy configuration in Centrifugo v6's layout: ``client.proxy.connect`` / ``client.proxy.refresh``,
``channel.proxy.subscribe`` / ``publish`` / ``sub_refresh`` / ``subscribe_stream``, ``rpc.proxy`` and the named
``proxies`` array, each entry of the same shape. A namespace (or RPC namespace) turns a hook on and picks a proxy
by name; ``"default"`` means the proxy under ``channel.proxy`` / ``rpc.proxy``.

Kept apart from ``node/config.py`` (which imports these) so the proxy keys live in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from node.config_fields import duration
from node.errors import ConfigError

DEFAULT_PROXY_NAME: Final = "default"



@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyTlsConfig:
    """Client TLS towards the backend (HTTPS or GRPC over TLS); PEM values are the PEM text or a file path."""

    enabled: bool = False
    # How the backend's certificate is checked ...
    server_ca_pem: str = ""
    insecure_skip_verify: bool = False
    server_name: str = ""
    # ... and the client certificate shown to it (mutual TLS).
    cert_pem: str = ""
    key_pem: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformError:
    code: int = 0
    message: str = ""
    temporary: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformDisconnect:
    code: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpStatusToCodeTransform:
    """An HTTP status of the backend answered to the client as this error or disconnect instead of 100."""

    status_code: int = 0
    to_error: TransformError = TransformError()
    to_disconnect: TransformDisconnect = TransformDisconnect()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHttpConfig:
    tls: ProxyTlsConfig = ProxyTlsConfig()
    static_headers: dict[str, str] = field(default_factory=dict)
    status_to_code_transforms: tuple[HttpStatusToCodeTransform, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyGrpcConfig:
    tls: ProxyTlsConfig = ProxyTlsConfig()
    credentials_key: str = ""
    credentials_value: str = ""
    compression: bool = False
    static_metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """One backend endpoint: ``http(s)://…`` is called with a JSON POST, ``grpc://host:port`` (or a bare
    ``host:port``) through the ``centrifugal.centrifugo.proxy.CentrifugoProxy`` service."""

    endpoint: str = ""
    timeout: float = duration(1.0)
    http_headers: tuple[str, ...] = ()
    grpc_metadata: tuple[str, ...] = ()
    emulated_headers: tuple[str, ...] = ()
    binary_encoding: bool = False
    include_connection_meta: bool = False
    http: ProxyHttpConfig = ProxyHttpConfig()
    grpc: ProxyGrpcConfig = ProxyGrpcConfig()

    def check(self, where: str) -> None:
        if self.timeout <= 0:
            raise ConfigError(f"{where}.timeout must be positive")
        if self.endpoint.startswith(("http://", "https://", "grpc://")) or not self.endpoint:
            return
        if "://" in self.endpoint:
            raise ConfigError(f"{where}.endpoint: unsupported scheme in {self.endpoint!r} (http, https or grpc)")

    @property
    def is_http(self) -> bool:
        return self.endpoint.startswith(("http://", "https://"))


@dataclass(frozen=True, slots=True, kw_only=True)
class EnabledProxyConfig(ProxyConfig):
    """``client.proxy.connect`` and ``client.proxy.refresh``: a proxy plus its switch."""

    enabled: bool = False

    def __post_init__(self) -> None:
        self.check("client.proxy")
        if self.enabled and not self.endpoint:
            raise ConfigError("client.proxy: an enabled proxy needs an endpoint")


@dataclass(frozen=True, slots=True, kw_only=True)
class DefaultProxyConfig(ProxyConfig):
    """``channel.proxy.<hook>`` and ``rpc.proxy``: the proxy a namespace names ``"default"``."""

    def __post_init__(self) -> None:
        self.check("proxy")


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedProxyConfig(ProxyConfig):
    """An entry of the top-level ``proxies`` array."""

    name: str = ""

    def __post_init__(self) -> None:
        section = f"proxies[{self.name}]"
        if not self.name:
            raise ConfigError("proxies: every proxy needs a name")
        self.check(section)
        if not self.endpoint:
            raise ConfigError(f"{section}: endpoint is required")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientProxyContainer:
    connect: EnabledProxyConfig = EnabledProxyConfig()
    refresh: EnabledProxyConfig = EnabledProxyConfig()


NO_CHANNEL_PROXY: Final = DefaultProxyConfig()  # frozen: one unset hook serves as every hook's default


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelProxyContainer:
    subscribe: DefaultProxyConfig = NO_CHANNEL_PROXY
    publish: DefaultProxyConfig = NO_CHANNEL_PROXY
    sub_refresh: DefaultProxyConfig = NO_CHANNEL_PROXY
    subscribe_stream: DefaultProxyConfig = NO_CHANNEL_PROXY
    shared_poll_refresh: DefaultProxyConfig = NO_CHANNEL_PROXY  # namespaces of subscription_type "shared_poll"
    map_publish: DefaultProxyConfig = NO_CHANNEL_PROXY  # map namespaces with map.publish_proxy_enabled
    map_remove: DefaultProxyConfig = NO_CHANNEL_PROXY  # map namespaces with map.remove_proxy_enabled


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcOptions:
    proxy_enabled: bool = False
    proxy_name: str = DEFAULT_PROXY_NAME


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcNamespaceConfig(RpcOptions):
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("rpc.namespaces: every namespace needs a name")


# A namespace's hooks by key prefix, and how Centrifugo names them in its errors.
NAMESPACE_HOOKS: Final = (("subscribe", "subscribe"), ("publish", "publish"), ("sub_refresh", "sub refresh"),
                          ("subscribe_stream", "subscribe stream"))


def check_proxy_names(proxies: Iterable[NamedProxyConfig], channel_scopes: Iterable[tuple[str, Any]],
                      rpc_scopes: Iterable[tuple[str, RpcOptions]]) -> None:
    """Centrifugo's load-time checks, with its wording: named proxies are unique and not "default", every proxy
    name a namespace (its hooks, map writes, shared poll) or an RPC namespace gives exists (enabled or not), and
    a subscribe stream proxy is not
    combined with the subscribe, publish or sub_refresh proxy in one namespace. A scope is (its name in errors:
    "in channel.without_namespace", "namespace chat", ..., its options)."""
    names: list[str] = []
    for proxy in proxies:
        if proxy.name in names:
            raise ConfigError(f"duplicate proxy name in proxies: {proxy.name}")
        names.append(proxy.name)
    if DEFAULT_PROXY_NAME in names:
        raise ConfigError(f"proxy name {DEFAULT_PROXY_NAME} is reserved")
    known = {*names, DEFAULT_PROXY_NAME}
    for where, ns in channel_scopes:
        named = [(label, getattr(ns, f"{hook}_proxy_name")) for hook, label in NAMESPACE_HOOKS]
        named += [("map publish", ns.map.publish_proxy_name), ("map remove", ns.map.remove_proxy_name)]
        if ns.subscription_type == "shared_poll":
            named.append(("shared poll", ns.shared_poll.proxy_name))
        for label, name in named:
            if name and name not in known:
                raise ConfigError(f'{where}: {label} proxy with name "{name}" not found')
        if ns.subscribe_stream_proxy_enabled and (
                ns.subscribe_proxy_enabled or ns.publish_proxy_enabled or ns.sub_refresh_proxy_enabled):
            raise ConfigError(f"{where}: can't use subscribe stream proxy together with subscribe, publish or "
                              "sub refresh proxies")
    for where, opts in rpc_scopes:
        if opts.proxy_name and opts.proxy_name not in known:
            raise ConfigError(f"{where}: proxy {opts.proxy_name} not found for rpc")


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveEventsConfig:
    """Fugato only (no Centrifugo key): reliable disconnect and unsubscribe notifications to ``endpoint``,
    batched, retried with backoff, delivered at least once with an idempotency key per event."""

    enabled: bool = False
    endpoint: str = ""
    timeout: float = duration(5.0)
    batch_size: int = 100
    batch_interval: float = duration(0.05)
    max_retry_interval: float = duration(10.0)
    max_queue_size: int = 100000
    http_headers: dict[str, str] = field(default_factory=dict)
    unsubscribe: bool = True
    # How long a node's connection records outlive it in the engine: peers that find them after that time
    # send the leave events of the dead node's connections.
    connection_record_ttl: float = duration(30.0)

    def __post_init__(self) -> None:
        if self.enabled and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError("fugato.leave_events.endpoint must be an http(s):// URL")
        if self.batch_size < 1 or self.max_queue_size < 1:
            raise ConfigError("fugato.leave_events: batch_size and max_queue_size must be positive")
        if self.connection_record_ttl <= 0 or self.timeout <= 0:
            raise ConfigError("fugato.leave_events: durations must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class FugatoConfig:
    """Keys Centrifugo does not have; a Centrifugo node would warn about this section and ignore it."""

    leave_events: LeaveEventsConfig = LeaveEventsConfig()
