"""The ``map`` options of a namespace, with Centrifugo v6.8's names (``map_broker`` is node/maps/broker_config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.config_fields import duration
from node.errors import ConfigError

SUBSCRIPTION_TYPES: Final = ("stream", "map", "map_clients", "map_users", "shared_poll")
MAP_SUBSCRIPTION_TYPES: Final = ("map", "map_clients", "map_users")  # the types whose channels the map broker keeps
# map_clients / map_users: presence maps the server keeps (one key per connection / per user) for channels whose
# namespace names them by prefix (node/maps/presence.py).
PRESENCE_TYPES: Final = ("map_clients", "map_users")
# "recoverable" is Centrifugo's name; "durable" is kept as Fugato's earlier spelling of it.
MODES: Final = ("ephemeral", "recoverable", "durable", "persistent")
# Centrifugo derives these for durable/persistent maps when they are not set; ephemeral maps keep no stream
# for clients, but Fugato still keeps a short one internally to hand a subscriber over from state to live.
DEFAULT_STREAM_SIZE: Final = 100
DEFAULT_STREAM_TTL: Final = 60.0
# A meta TTL that never runs out (the brokers keep the channel's epoch and top for good): Centrifugo's default for
# persistent maps, whose keys never expire either.
PERMANENT: Final = -1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MapOptions:
    mode: str = ""
    key_ttl: float = duration(0.0)
    stream_size: int = 0
    stream_ttl: float = duration(0.0)
    meta_ttl: float = duration(0.0)
    client_key: str = ""  # "", "client_id" or "user_id": the server picks the key of a client's publish/remove
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    publish_proxy_enabled: bool = False
    publish_proxy_name: str = "default"
    allow_remove_for_client: bool = False
    allow_remove_for_subscriber: bool = False
    allow_remove_for_anonymous: bool = False
    remove_proxy_enabled: bool = False
    remove_proxy_name: str = "default"
    remove_client_on_unsubscribe: bool = False
    # Pages of the subscribe phases: the client's limit, else the default, clamped to [min, max].
    default_page_size: int = 100
    min_page_size: int = 100
    max_page_size: int = 1000

    def page_size(self, asked: int) -> int:
        return max(self.min_page_size, min(asked or self.default_page_size, self.max_page_size))

    @property
    def recoverable(self) -> bool:
        """Whether clients catch up from the stream after a reconnect (else they reload the state)."""
        return self.mode in ("recoverable", "durable", "persistent")

    @property
    def effective_stream_size(self) -> int:
        return self.stream_size or DEFAULT_STREAM_SIZE

    @property
    def effective_stream_ttl(self) -> float:
        return self.stream_ttl or DEFAULT_STREAM_TTL

    @property
    def effective_meta_ttl(self) -> float:
        """Centrifugo's derivation (centrifuge map_broker.go, ResolveAndValidateMapChannelOptions): an unset
        meta_ttl is ten stream TTLs, at least key_ttl, for maps whose keys expire, and permanent otherwise."""
        if self.meta_ttl > 0:
            return self.meta_ttl
        if self.mode == "persistent":
            return PERMANENT
        return max(self.effective_stream_ttl * 10, self.key_ttl)

    def run_time_error(self) -> str:
        """Why Centrifugo fails every operation on this map (internal error 100) although its config loaded: the
        channel option checks it makes per operation, not at load (centrifuge ResolveAndValidateMapChannelOptions).
        Empty when the options are usable."""
        if self.mode == "ephemeral" or self.meta_ttl <= 0:
            return ""
        if self.key_ttl <= 0:
            return "map.meta_ttl must be 0 (permanent) when map.key_ttl is 0 (permanent keys)"
        if self.meta_ttl < self.key_ttl:
            return "map.meta_ttl must be >= map.key_ttl (metadata must outlive keys)"
        return ""

    def validate(self, where: str, subscription_type: str) -> None:
        """Centrifugo's load-time checks of a namespace's map options (internal/config/validate.go); the rest of
        its checks fail operations at run time instead (run_time_error)."""
        if subscription_type not in SUBSCRIPTION_TYPES:
            raise ConfigError(f"{where}: unknown subscription_type {subscription_type!r}")
        is_map = subscription_type in MAP_SUBSCRIPTION_TYPES
        if self.remove_client_on_unsubscribe and not is_map:
            raise ConfigError(f"{where}: map.remove_client_on_unsubscribe requires subscription_type to be a map "
                              "type")
        if not is_map and not self.mode:
            return  # Centrifugo checks a map section's mode and TTLs wherever it is set, map type or not
        if self.mode not in MODES:
            raise ConfigError(f"{where}: map.mode must be one of {', '.join(MODES)} for subscription_type "
                              f"{subscription_type!r}")
        if self.mode in ("ephemeral", "recoverable", "durable") and self.key_ttl <= 0:
            raise ConfigError(f"{where}: map.key_ttl is required for {self.mode} mode")
        if self.mode == "persistent" and self.key_ttl != 0:
            raise ConfigError(f"{where}: map.key_ttl must not be set when map.mode is \"persistent\" (entries don't "
                              "expire)")
        if self.mode == "persistent" and subscription_type in PRESENCE_TYPES:
            # Presence entries are cleaned up by their TTL when a remove fails (map_users: only by it).
            raise ConfigError(f"{where}: map.mode \"persistent\" is not allowed with subscription_type "
                              f"{subscription_type!r} (presence entries need a key_ttl: use \"ephemeral\" or "
                              "\"recoverable\")")
        if self.mode == "ephemeral":
            # No stream for clients: nothing of one to size or keep.
            for name in ("stream_size", "stream_ttl", "meta_ttl"):
                if getattr(self, name) != 0:
                    raise ConfigError(f"{where}: map.{name} must be 0 for map.mode \"ephemeral\"")
        if self.stream_size < 0 or self.stream_ttl < 0 or self.meta_ttl < 0:
            raise ConfigError(f"{where}: map sizes and durations must not be negative")
        if 0 < self.meta_ttl < self.effective_stream_ttl:
            raise ConfigError(f"{where}: map.meta_ttl ({self.meta_ttl:g}s) must be >= map.stream_ttl "
                              f"({self.effective_stream_ttl:g}s) (metadata must outlive stream)")
        if self.client_key not in ("", "client_id", "user_id"):
            raise ConfigError(f"{where}: map.client_key must be \"client_id\" or \"user_id\"")
        if not 0 < self.min_page_size <= self.max_page_size or self.default_page_size <= 0:
            raise ConfigError(f"{where}: map page sizes must be positive, min_page_size <= max_page_size")
        if self.client_key and (self.publish_proxy_enabled or self.remove_proxy_enabled):
            # Two ways of keying a client's writes: the proxy, when enabled, is the one (Centrifugo refuses both).
            raise ConfigError(f"{where}: map.client_key is not compatible with map.publish_proxy_enabled / "
                              "map.remove_proxy_enabled (the proxy picks the key: return it as result.key)")
