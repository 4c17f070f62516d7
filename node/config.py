"""Configuration: frozen per-component dataclasses in Centrifugo v6's JSON layout (``config_load`` reads them).

Each dataclass mirrors one section of a Centrifugo v6 ``config.json``; field names are the JSON keys, so a
Centrifugo user's file maps onto these classes unchanged. Durations are floats in seconds here; in files
they are Go duration strings (``"25s"``, ``"720h"``) or integer nanoseconds, as Centrifugo reads them.
Fields carrying ``metadata={"duration": True}`` are parsed that way by the loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from node.config_engine import BrokerConfig, EngineConfig, PresenceManagerConfig
from node.config_fields import duration
from node.consumers.config import ConsumerConfig, check_unique_names
from node.errors import ConfigError
from node.maps.broker_config import MapBrokerConfig
from node.maps.options import MAP_SUBSCRIPTION_TYPES, MapOptions
from node.proxy.config import (
    ChannelProxyContainer,
    ClientProxyContainer,
    DefaultProxyConfig,
    FugatoConfig,
    NamedProxyConfig,
    RpcNamespaceConfig,
    RpcOptions,
    TransformDisconnect,
    check_proxy_names,
)
from node.sharedpoll.options import SharedPollConfig, SharedPollOptions


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpServerConfig:
    address: str = ""
    port: int = 8000
    internal_address: str = ""
    internal_port: int = 0  # 0 = serve the API, metrics and health on the main port


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = "info"
    file: str = ""

    def __post_init__(self) -> None:
        if self.level not in ("none", "trace", "debug", "info", "warn", "error", "fatal"):
            raise ConfigError(f"log.level: unknown level {self.level!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenConfig:
    """How connection (or, with ``enabled``, subscription) JWTs are verified."""

    enabled: bool = False  # only meaningful for client.subscription_token
    hmac_secret_key: str = ""
    hmac_previous_secret_key: str = ""
    hmac_previous_secret_key_valid_until: int = 0  # unix seconds; 0 = no limit
    rsa_public_key: str = ""
    ecdsa_public_key: str = ""
    jwks_public_endpoint: str = ""
    audience: str = ""
    audience_regex: str = ""
    issuer: str = ""
    issuer_regex: str = ""
    user_id_claim: str = ""

    def __post_init__(self) -> None:
        for name in ("audience_regex", "issuer_regex"):
            pattern = getattr(self, name)
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"token.{name}: invalid regular expression: {e}") from e


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeTransform:
    """A connect error (or disconnect) code and what a unidirectional client gets for it instead (each subclass
    adds its ``to``): Centrifugo's ``transforms`` items."""

    code: int = 0

    def _check(self, section: str, target: str, valid: bool, what: str) -> None:
        if not valid:
            raise ConfigError(f"{section}: code {self.code} maps to {target}, which is not {what}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeTransforms:
    """A switch and its list of transforms (each subclass adds ``transforms`` of its own item type)."""

    enabled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectCodeTransform(CodeTransform):
    to: TransformDisconnect = TransformDisconnect()  # the same {code, reason} as a proxy's to_disconnect

    def __post_init__(self) -> None:
        self._check("client.connect_code_to_unidirectional_disconnect", str(self.to.code),
                    3000 <= self.to.code <= 4999, "a disconnect code (3000-4999)")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectCodeToUnidirectionalDisconnect(CodeTransforms):
    transforms: tuple[ConnectCodeTransform, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeToUserPersonalChannel:
    """Subscribe every authenticated connection to its user's personal channel ``<namespace>:#<user>`` (``#<user>``
    without a namespace); with ``single_connection`` a new connection disconnects the user's others."""

    enabled: bool = False
    personal_channel_namespace: str = ""
    single_connection: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    token: TokenConfig = TokenConfig()
    subscription_token: TokenConfig = TokenConfig()
    allowed_origins: tuple[str, ...] = ()
    allow_anonymous_connect_without_token: bool = False
    disallow_anonymous_connection_tokens: bool = False
    insecure: bool = False
    insecure_skip_token_signature_verify: bool = False
    ping_interval: float = duration(25.0)
    pong_timeout: float = duration(8.0)
    expired_close_delay: float = duration(25.0)
    expired_sub_close_delay: float = duration(25.0)
    stale_close_delay: float = duration(10.0)
    channel_limit: int = 128
    queue_max_size: int = 1048576
    presence_update_interval: float = duration(27.0)
    channel_position_check_delay: float = duration(40.0)
    user_connection_limit: int = 0
    connection_limit: int = 0
    connect_include_server_time: bool = False
    history_max_publication_limit: int = 300
    recovery_max_publication_limit: int = 300
    # Accepted for Centrifugo compatibility, unused: every message is its own WebSocket frame, and a client's
    # frames of one flush leave in one write() (what Centrifugo's batching into one frame is for).
    max_messages_in_frame: int = 16
    # Centrifugo PRO's batching knob: hold writes this long after the first queued message, so a connection
    # that gets many messages sends them in fewer system calls (less CPU, more latency). 0 = write at once.
    write_delay: float = duration(0.0)
    # Unidirectional transports get a connect error as a disconnect push; these override the default mapping.
    connect_code_to_unidirectional_disconnect: ConnectCodeToUnidirectionalDisconnect = \
        ConnectCodeToUnidirectionalDisconnect()
    proxy: ClientProxyContainer = ClientProxyContainer()  # connect and refresh proxies (node/proxy/)
    subscribe_to_user_personal_channel: SubscribeToUserPersonalChannel = SubscribeToUserPersonalChannel()
    # Commands of one connection processed at the same time (0 or 1: one after the other).
    concurrency: int = 0

    def __post_init__(self) -> None:
        if self.pong_timeout > 0 and self.ping_interval <= self.pong_timeout:
            raise ConfigError("client.ping_interval must be greater than client.pong_timeout")
        if self.ping_interval <= 0:
            raise ConfigError("client.ping_interval must be positive")
        for name in ("channel_limit", "queue_max_size", "user_connection_limit", "connection_limit",
                     "history_max_publication_limit", "recovery_max_publication_limit", "concurrency", "write_delay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"client.{name} must not be negative")
        if self.max_messages_in_frame < 1:
            raise ConfigError("client.max_messages_in_frame must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOptions:
    """Options of one namespace (or of channels without a namespace). All off by default, as in Centrifugo."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = 0
    history_ttl: float = duration(0.0)
    history_meta_ttl: float = duration(0.0)  # 0 = channel.history_meta_ttl
    force_positioning: bool = False
    allow_positioning: bool = False
    force_recovery: bool = False
    allow_recovery: bool = False
    force_recovery_mode: str = ""
    allowed_delta_types: tuple[str, ...] = ()
    delta_publish: bool = False
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_anonymous: bool = False
    allow_history_for_client: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    channel_regex: str = ""
    publication_data_format: str = ""
    # Hooks to the application backend (node/proxy/): each names a proxy of ``proxies`` or "default" (the one
    # under channel.proxy).
    subscribe_proxy_enabled: bool = False
    subscribe_proxy_name: str = "default"
    publish_proxy_enabled: bool = False
    publish_proxy_name: str = "default"
    sub_refresh_proxy_enabled: bool = False
    sub_refresh_proxy_name: str = "default"
    subscribe_stream_proxy_enabled: bool = False
    subscribe_stream_proxy_name: str = "default"
    subscribe_stream_proxy_bidirectional: bool = False
    subscription_type: str = "stream"  # "map": a keyed state channel (node/maps/)
    map: MapOptions = MapOptions()
    # Map presence (node/maps/presence.py): a subscriber of channel C gets key = client id in the map_clients
    # channel prefix + C, key = user id in the map_users channel prefix + C.
    map_clients_presence_channel_prefix: str = ""
    map_users_presence_channel_prefix: str = ""
    allow_tags_filter: bool = False  # subscribers may pass a tags filter (node/tagsfilter.py)
    # Told to subscribers (subscribe result publish_debounce, ms): the SDK coalesces its publishes.
    client_publish_debounce_interval: float = duration(0.0)
    shared_poll: SharedPollOptions = SharedPollOptions()  # subscription_type "shared_poll" (node/sharedpoll/)

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0

    def validate(self, where: str) -> None:
        if (self.history_size > 0) != (self.history_ttl > 0):
            raise ConfigError(f"{where}: history_size and history_ttl must be set together")
        if self.history_size < 0 or self.history_ttl < 0 or self.history_meta_ttl < 0:
            raise ConfigError(f"{where}: history_size/history_ttl/history_meta_ttl must not be negative")
        if self.history_meta_ttl and self.history_ttl > self.history_meta_ttl:
            raise ConfigError(f"{where}: history_ttl must not exceed history_meta_ttl")
        if self.history_ttl != int(self.history_ttl) or self.history_meta_ttl != int(self.history_meta_ttl):
            raise ConfigError(f"{where}: history_ttl and history_meta_ttl must be whole seconds")
        if self.force_recovery and not self.history_enabled:
            raise ConfigError(f"{where}: force_recovery requires history (history_size and history_ttl)")
        if self.force_recovery_mode not in ("", "stream", "cache"):
            raise ConfigError(f"{where}: force_recovery_mode must be \"stream\" or \"cache\"")
        for delta in self.allowed_delta_types:
            if delta != "fossil":
                raise ConfigError(f"{where}: unknown delta type {delta!r} (only \"fossil\")")
        if self.publication_data_format not in ("", "json", "json_object", "binary"):
            raise ConfigError(f"{where}: unknown publication_data_format {self.publication_data_format!r}")
        if self.channel_regex:
            try:
                re.compile(self.channel_regex)
            except re.error as e:
                raise ConfigError(f"{where}: invalid channel_regex: {e}") from e
        if self.client_publish_debounce_interval < 0:
            raise ConfigError(f"{where}: client_publish_debounce_interval must not be negative")
        self.map.validate(where, self.subscription_type)
        if self.subscription_type == "shared_poll":
            self.shared_poll.validate(where)


NAMESPACE_NAME_RE: Final = re.compile(r"^[-a-zA-Z0-9_.]{2,}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceConfig(ChannelOptions):
    name: str = ""

    def __post_init__(self) -> None:
        if not NAMESPACE_NAME_RE.match(self.name):
            raise ConfigError(f"channel.namespaces: invalid namespace name {self.name!r} "
                              "(must match ^[-a-zA-Z0-9_.]{2,}$)")
        self.validate(f"channel.namespaces[{self.name}]")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelConfig:
    proxy: ChannelProxyContainer = ChannelProxyContainer()
    without_namespace: ChannelOptions = ChannelOptions()
    namespaces: tuple[NamespaceConfig, ...] = ()
    history_meta_ttl: float = duration(720 * 3600.0)
    max_length: int = 255
    private_prefix: str = "$"
    namespace_boundary: str = ":"
    user_boundary: str = "#"
    user_separator: str = ","

    def __post_init__(self) -> None:
        self.without_namespace.validate("channel.without_namespace")
        names = [ns.name for ns in self.namespaces]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"channel.namespaces: duplicate names {', '.join(dupes)}")
        if self.max_length <= 0:
            raise ConfigError("channel.max_length must be positive")
        _check_presence_prefixes(self)


def _check_presence_prefixes(channels: ChannelConfig) -> None:
    """Each ``map_*_presence_channel_prefix`` must lead to a namespace of the matching presence type (as
    Centrifugo checks at load): its namespace is the part before the first boundary, none = no namespace."""
    by_name: dict[str, ChannelOptions] = {ns.name: ns for ns in channels.namespaces}
    scopes: list[tuple[str, ChannelOptions]] = [("channel.without_namespace", channels.without_namespace)]
    scopes += [(f"channel.namespaces[{ns.name}]", ns) for ns in channels.namespaces]
    for where, scope in scopes:
        for option, kind in (("map_clients_presence_channel_prefix", "map_clients"),
                             ("map_users_presence_channel_prefix", "map_users")):
            prefix: str = getattr(scope, option)
            if not prefix:
                continue
            name, found, _ = prefix.partition(channels.namespace_boundary)
            target = by_name.get(name) if found else channels.without_namespace
            if target is None:
                raise ConfigError(f"{where}: {option} {prefix!r}: namespace {name!r} does not exist")
            if target.subscription_type != kind:
                raise ConfigError(f"{where}: {option} {prefix!r}: its namespace must have subscription_type "
                                  f"{kind!r} (got {target.subscription_type!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcPingConfig:
    enabled: bool = False
    method: str = "ping"


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcConfig:
    proxy: DefaultProxyConfig = DefaultProxyConfig()
    without_namespace: RpcOptions = RpcOptions()
    namespaces: tuple[RpcNamespaceConfig, ...] = ()
    ping: RpcPingConfig = RpcPingConfig()
    namespace_boundary: str = ":"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpApiConfig:
    disabled: bool = False
    handler_prefix: str
    key: str = ""
    error_mode: str = ""
    external: bool = False
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.error_mode not in ("", "transport"):
            raise ConfigError("http_api.error_mode must be \"\" or \"transport\"")


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcApiConfig:
    """The server API over GRPC (Centrifugo's ``CentrifugoApi`` service); off by default, as in Centrifugo."""

    enabled: bool = False
    address: str = ""  # "" = every interface
    port: int = 10000
    key: str = ""  # "" = no authentication, as in Centrifugo; else metadata "authorization: apikey <key>"
    error_mode: str = ""
    max_receive_message_size: int = 0  # bytes; 0 = GRPC's default (4 MiB)
    reflection: bool = False

    def __post_init__(self) -> None:
        if self.error_mode not in ("", "transport"):
            raise ConfigError("grpc_api.error_mode must be \"\" or \"transport\"")
        if not 0 < self.port < 65536:
            raise ConfigError("grpc_api.port must be between 1 and 65535")
        if self.max_receive_message_size < 0:
            raise ConfigError("grpc_api.max_receive_message_size must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebsocketConfig:
    disabled: bool = False
    handler_prefix: str
    message_size_limit: int = 65536
    write_timeout: float = duration(1.0)
    compression: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    """An HTTP endpoint that can be switched on or off."""

    enabled: bool = False
    handler_prefix: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpBodyEndpointConfig(EndpointConfig):
    """An endpoint that reads commands from request bodies (the HTTP-stream and SSE transports, bidirectional or
    not)."""

    max_request_body_size: int = 65536


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulationConfig:
    """Where emulated transports post their commands; served while ``sse`` or ``http_stream`` is enabled."""

    handler_prefix: str
    max_request_body_size: int = 65536


@dataclass(frozen=True, slots=True, kw_only=True)
class UniWebsocketConfig:
    enabled: bool = False
    handler_prefix: str
    message_size_limit: int = 65536  # the first (connect) message
    join_push_messages: bool = False  # a flush's messages in one frame, newline-separated


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponseTo:
    status_code: int = 0
    body: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponseTransform(CodeTransform):
    """The plain HTTP response a unidirectional HTTP request gets for a connect error or disconnect code."""

    to: HttpResponseTo = HttpResponseTo()

    def __post_init__(self) -> None:
        self._check("connect_code_to_http_response", f"HTTP status {self.to.status_code}",
                    100 <= self.to.status_code <= 599, "an HTTP status")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectCodeToHttpResponse(CodeTransforms):
    transforms: tuple[HttpResponseTransform, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UniHttpConfig(HttpBodyEndpointConfig):
    """A unidirectional transport over one HTTP response: its connect errors become plain HTTP responses."""

    connect_code_to_http_response: ConnectCodeToHttpResponse = ConnectCodeToHttpResponse()


@dataclass(frozen=True, slots=True, kw_only=True)
class UniGrpcConfig:
    """The unidirectional GRPC stream (Centrifugo's ``CentrifugoUniStream``); off by default, as in Centrifugo."""

    enabled: bool = False
    address: str = ""  # "" = every interface
    port: int = 11000
    max_receive_message_size: int = 65536  # the connect request

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError("uni_grpc.port must be between 1 and 65535")
        if self.max_receive_message_size <= 0:
            raise ConfigError("uni_grpc.max_receive_message_size must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig(EndpointConfig):
    # On by default (Centrifugo defaults to off): orchestrators and the README's quick start rely on it.
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The admin web UI (Centrifugo v6's ``admin`` section; node/admin/)."""

    enabled: bool = False
    password: str = ""  # the login password
    secret: str = ""  # HMAC key of the session tokens issued at login
    insecure: bool = False  # no login at all: for local use behind a firewall only
    handler_prefix: str  # "" = the UI at "/", as in Centrifugo
    web_path: str = ""  # a directory to serve instead of the built-in UI (e.g. a build of Centrifugo's web app)
    web_proxy_address: str = ""  # a running web app's dev server to proxy the UI's files from
    external: bool = False  # with http_server.internal_port: serve the UI on the main port instead

    def __post_init__(self) -> None:
        if self.handler_prefix and not self.handler_prefix.startswith("/"):
            raise ConfigError("admin.handler_prefix must start with \"/\"")
        if self.web_proxy_address and not self.web_proxy_address.startswith(("http://", "https://")):
            raise ConfigError("admin.web_proxy_address must be an http:// or https:// URL")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSection:
    name: str = ""  # "" = <hostname>_<port>


@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownConfig:
    timeout: float = duration(30.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration; each component receives only its own section. Every HTTP path the server
    serves is given here, where its section is declared (the sections' classes have no path default; the
    loader keeps a declared section's values for the keys a file leaves out), so the paths read as one table."""

    http_server: HttpServerConfig = HttpServerConfig()
    log: LogConfig = LogConfig()
    engine: EngineConfig = EngineConfig()
    broker: BrokerConfig = BrokerConfig()
    presence_manager: PresenceManagerConfig = PresenceManagerConfig()
    map_broker: MapBrokerConfig = MapBrokerConfig()
    shared_poll: SharedPollConfig = SharedPollConfig()
    client: ClientConfig = ClientConfig()
    channel: ChannelConfig = ChannelConfig()
    rpc: RpcConfig = RpcConfig()
    http_api: HttpApiConfig = HttpApiConfig(handler_prefix="/api")
    grpc_api: GrpcApiConfig = GrpcApiConfig()
    websocket: WebsocketConfig = WebsocketConfig(handler_prefix="/connection/websocket")
    # Bidirectional emulation over one streaming POST response (``/connection/http_stream``).
    http_stream: HttpBodyEndpointConfig = HttpBodyEndpointConfig(handler_prefix="/connection/http_stream")
    # Bidirectional emulation over an EventSource stream (``/connection/sse``).
    sse: HttpBodyEndpointConfig = HttpBodyEndpointConfig(handler_prefix="/connection/sse")
    emulation: EmulationConfig = EmulationConfig(handler_prefix="/emulation")
    uni_websocket: UniWebsocketConfig = UniWebsocketConfig(handler_prefix="/connection/uni_websocket")
    # Unidirectional EventSource stream (``/connection/uni_sse``).
    uni_sse: UniHttpConfig = UniHttpConfig(handler_prefix="/connection/uni_sse")
    # Unidirectional stream over one HTTP response (``/connection/uni_http_stream``).
    uni_http_stream: UniHttpConfig = UniHttpConfig(handler_prefix="/connection/uni_http_stream")
    uni_grpc: UniGrpcConfig = UniGrpcConfig()
    health: HealthConfig = HealthConfig(handler_prefix="/health")
    # Prometheus metrics endpoint (``/metrics``).
    prometheus: EndpointConfig = EndpointConfig(handler_prefix="/metrics")
    admin: AdminConfig = AdminConfig(handler_prefix="")
    node: NodeSection = NodeSection()
    shutdown: ShutdownConfig = ShutdownConfig()
    proxies: tuple[NamedProxyConfig, ...] = ()
    fugato: FugatoConfig = FugatoConfig()  # Fugato-only keys (Centrifugo has no such section)
    consumers: tuple[ConsumerConfig, ...] = ()  # node/consumers/config.py

    def __post_init__(self) -> None:
        check_unique_names(self.consumers)
        check_personal_channel(self.client.subscribe_to_user_personal_channel, self.channel)
        self.shared_poll.check(o.subscription_type for o in (self.channel.without_namespace, *self.channel.namespaces))
        check_proxy_names(
            self.proxies,
            [("in channel.without_namespace", self.channel.without_namespace),
             *((f"namespace {ns.name}", ns) for ns in self.channel.namespaces)],
            [("in rpc.without_namespace", self.rpc.without_namespace),
             *((f"rpc namespace {ns.name}", ns) for ns in self.rpc.namespaces)])


def check_personal_channel(personal: SubscribeToUserPersonalChannel, channel: ChannelConfig) -> None:
    """Centrifugo's rules: the personal channel's namespace must exist, and keeping a single connection per user
    needs presence there (the new connection finds the others through it)."""
    if not personal.enabled:
        return
    name = personal.personal_channel_namespace
    if not name:
        opts: ChannelOptions = channel.without_namespace
    else:
        found = [ns for ns in channel.namespaces if ns.name == name]
        if not found:
            raise ConfigError(f"namespace for user personal channel not found: {name}")
        opts = found[0]
    if personal.single_connection and not opts.presence:
        where = f"namespace {name}" if name else "channel.without_namespace"
        raise ConfigError(f"client.subscribe_to_user_personal_channel.single_connection needs presence in {where}")


def broker_warnings(config: Config) -> list[str]:
    """What a configuration asks of its broker that the broker cannot do (printed by checkconfig and serve)."""
    broker = config.broker
    if not (broker.enabled and broker.type == "nats") or broker.nats.jetstream.enabled:
        return []
    channel = config.channel
    scopes = [("channel.without_namespace", channel.without_namespace),
              *((f"channel.namespaces[{ns.name}]", ns) for ns in channel.namespaces)]
    return [f"{where}: history, recovery and positioning are not available with the NATS broker (requests get "
            "108 \"not available\"); enable broker.nats.jetstream (a Fugato-only option) to keep history in NATS"
            for where, opts in scopes if opts.history_enabled]


def has_map_namespaces(channel: ChannelConfig) -> bool:
    return any(o.subscription_type in MAP_SUBSCRIPTION_TYPES for o in (channel.without_namespace, *channel.namespaces))


def spans_processes(config: Config) -> bool:
    """Whether the engine is shared between processes (both halves outside memory, and map state too when there
    are map namespaces): what several workers need."""
    broker = config.broker.type if config.broker.enabled else config.engine.type
    presence = config.presence_manager.type if config.presence_manager.enabled else config.engine.type
    maps_in_memory = config.map_broker.type == "memory" and broker != "redis" and has_map_namespaces(config.channel)
    return broker != "memory" and presence != "memory" and not maps_in_memory
