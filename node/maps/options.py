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
DEFAULT_META_TTL: Final = 720 * 3600.0


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
        return self.meta_ttl or DEFAULT_META_TTL

    def validate(self, where: str, subscription_type: str) -> None:
        if subscription_type not in SUBSCRIPTION_TYPES:
            raise ConfigError(f"{where}: unknown subscription_type {subscription_type!r}")
        if subscription_type in ("stream", "shared_poll"):
            return
        if self.mode not in MODES:
            raise ConfigError(f"{where}: map.mode must be one of {', '.join(MODES)} for subscription_type "
                              f"{subscription_type!r}")
        if self.mode in ("ephemeral", "recoverable", "durable") and self.key_ttl <= 0:
            raise ConfigError(f"{where}: map.key_ttl is required for {self.mode} mode")
        if self.mode == "persistent" and subscription_type in PRESENCE_TYPES:
            # Presence entries are cleaned up by their TTL when a remove fails (map_users: only by it).
            raise ConfigError(f"{where}: map.mode \"persistent\" is not allowed with subscription_type "
                              f"{subscription_type!r} (presence entries need a key_ttl: use \"ephemeral\" or "
                              "\"recoverable\")")
        if self.client_key not in ("", "client_id", "user_id"):
            raise ConfigError(f"{where}: map.client_key must be \"client_id\" or \"user_id\"")
        if self.stream_size < 0 or self.stream_ttl < 0 or self.key_ttl < 0 or self.meta_ttl < 0:
            raise ConfigError(f"{where}: map sizes and durations must not be negative")
        # Centrifugo refuses these on every map operation (its channel options' check; the API answers internal
        # error 100), so such a namespace could never be written to: refused here at load.
        if self.meta_ttl > 0 and self.key_ttl <= 0:
            raise ConfigError(f"{where}: map.meta_ttl must be 0 (permanent) when map.key_ttl is 0 (permanent keys)")
        if 0 < self.meta_ttl < self.key_ttl:
            raise ConfigError(f"{where}: map.meta_ttl must be >= map.key_ttl (the channel's meta must outlive its "
                              "keys)")
        if not 0 < self.min_page_size <= self.max_page_size or self.default_page_size <= 0:
            raise ConfigError(f"{where}: map page sizes must be positive, min_page_size <= max_page_size")
        if self.client_key and (self.publish_proxy_enabled or self.remove_proxy_enabled):
            # Two ways of keying a client's writes: the proxy, when enabled, is the one (Centrifugo refuses both).
            raise ConfigError(f"{where}: map.client_key is not compatible with map.publish_proxy_enabled / "
                              "map.remove_proxy_enabled (the proxy picks the key: return it as result.key)")

