"""The engine's configuration sections: ``engine`` (memory or Redis), and Centrifugo v6's separate ``broker``
(memory, Redis or NATS) and ``presence_manager``. ``config.Config`` holds them; the broker implementations
import only this module."""

from __future__ import annotations

from dataclasses import dataclass, field

from node.config_fields import RedisConnectionConfig, duration
from node.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisTlsConfig:
    enabled: bool = False
    insecure_skip_verify: bool = False
    server_ca_pem: str = ""  # PEM text of the CA that signed the Redis servers' certificates


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisEngineConfig(RedisConnectionConfig):
    """Redis for the broker and presence. Each entry of ``address`` (or of ``cluster_address``) is one shard:
    ``redis://host:port[/db]`` (``rediss://`` for TLS) for a standalone server, ``redis+cluster://h1:p1,h2:p2``
    (or a ``cluster_address`` entry ``h1:p1,h2:p2``) for a Redis Cluster. Channels are spread over shards with
    jump consistent hashing."""

    cluster_address: tuple[str, ...] = ()
    prefix: str = "centrifugo"
    presence_ttl: float = duration(60.0)
    tls: RedisTlsConfig = RedisTlsConfig()

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ConfigError("engine.redis.prefix must not contain braces (they are Redis Cluster hash tags)")
        if not self.prefix:
            raise ConfigError("engine.redis.prefix must not be empty")
        for addr in (*self.address, *self.cluster_address):
            if not addr:
                raise ConfigError("engine.redis: empty address")
        if self.presence_ttl <= 0:
            raise ConfigError("engine.redis.presence_ttl must be positive")

    @property
    def shards(self) -> tuple[str, ...]:
        """One address per shard; cluster_address entries become ``redis+cluster://`` URLs."""
        if self.cluster_address:
            return tuple(a if "://" in a else "redis+cluster://" + a for a in self.cluster_address)
        return self.address


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    type: str = "memory"
    redis: RedisEngineConfig = RedisEngineConfig()

    def __post_init__(self) -> None:
        if self.type not in ("memory", "redis"):
            raise ConfigError(f"engine.type: {self.type!r} is not supported (\"memory\" or \"redis\")")


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsRawModeConfig:
    """Centrifugo's raw mode: channels map onto NATS subjects as they are (plus ``prefix``, after
    ``channel_replacements``), and payloads travel without any wrapping."""

    enabled: bool = False
    channel_replacements: dict[str, str] = field(default_factory=dict)
    prefix: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsJetStreamConfig:
    """Fugato only (Centrifugo has no such key): history, offsets and epochs kept in a JetStream stream, so
    recovery, positioning and ``history`` work with NATS alone."""

    enabled: bool = False
    storage: str = "file"  # "file" or "memory": where nats-server keeps the stream
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.storage not in ("file", "memory"):
            raise ConfigError(f"broker.nats.jetstream.storage: {self.storage!r} (\"file\" or \"memory\")")
        if self.replicas < 1:
            raise ConfigError("broker.nats.jetstream.replicas must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsBrokerConfig:
    url: str = ""  # "" = nats://127.0.0.1:4222
    prefix: str = "centrifugo"
    dial_timeout: float = duration(1.0)
    write_timeout: float = duration(1.0)
    tls: RedisTlsConfig = RedisTlsConfig()
    allow_wildcards: bool = False
    raw_mode: NatsRawModeConfig = NatsRawModeConfig()
    jetstream: NatsJetStreamConfig = NatsJetStreamConfig()

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in " *>\t"):
            raise ConfigError("broker.nats.prefix must be a non-empty NATS subject token (no spaces, * or >)")
        if self.dial_timeout <= 0 or self.write_timeout <= 0:
            raise ConfigError("broker.nats.dial_timeout and write_timeout must be positive")
        if self.raw_mode.enabled and self.jetstream.enabled:
            raise ConfigError("broker.nats: raw_mode and jetstream cannot be combined (raw payloads carry no offsets)")


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerConfig:
    """Centrifugo v6's separate broker (PUB/SUB and history); when enabled it replaces the engine's."""

    enabled: bool = False
    type: str = "memory"
    redis: RedisEngineConfig = RedisEngineConfig()
    nats: NatsBrokerConfig = NatsBrokerConfig()

    def __post_init__(self) -> None:
        if self.type not in ("memory", "redis", "nats"):
            raise ConfigError(f"broker.type: {self.type!r} is not supported (\"memory\", \"redis\" or \"nats\")")


@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceManagerConfig:
    """Centrifugo v6's separate presence manager; when enabled it replaces the engine's."""

    enabled: bool = False
    type: str = "memory"
    redis: RedisEngineConfig = RedisEngineConfig()

    def __post_init__(self) -> None:
        if self.type not in ("memory", "redis"):
            raise ConfigError(f"presence_manager.type: {self.type!r} is not supported (\"memory\" or \"redis\")")
