"""Centrifugo v6.8's top-level ``map_broker`` section: where map state lives (``type`` memory, redis or postgres)
and the options of each backend, with Centrifugo's names and nesting (``map_broker.redis.*``,
``map_broker.postgres.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.config_engine import RedisEngineConfig
from node.config_fields import duration
from node.errors import ConfigError
from node.proxy.config import ProxyTlsConfig

MAP_BROKER_TYPES: Final = ("memory", "redis", "postgres")
# Centrifugo's memory map broker checks key expiry every second and has no option for it.
MEMORY_CLEANUP_INTERVAL: Final = 1.0
MEMORY_CLEANUP_BATCH_SIZE: Final = 100
MEMORY_IDEMPOTENT_RESULT_TTL: Final = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisMapBrokerConfig(RedisEngineConfig):
    """The Redis connection keys of the engine, plus the map broker's own. ``skip_pub_sub`` is accepted and
    not needed: Fugato's Redis map broker always publishes through its own PUB/SUB."""

    cleanup_interval: float = duration(1.0)  # negative: no expiry rounds on this node
    cleanup_batch_size: int = 100
    idempotent_result_ttl: float = duration(300.0)
    skip_pub_sub: bool = False

    def __post_init__(self) -> None:
        RedisEngineConfig.__post_init__(self)
        if self.cleanup_batch_size <= 0:
            raise ConfigError("map_broker.redis.cleanup_batch_size must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresMapOutboxConfig:
    poll_interval: float = duration(0.1)
    batch_size: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresMapBrokerConfig:
    dsn: str = ""
    tls: ProxyTlsConfig = ProxyTlsConfig()
    pool_size: int = 16
    num_shards: int = 8
    ttl_check_interval: float = duration(1.0)
    cleanup_interval: float = duration(60.0)
    idempotent_result_ttl: float = duration(300.0)
    binary_data: bool = False
    stream_retention: float = duration(24 * 3600.0)
    use_notify: bool = False
    notify_dsn: str = ""
    table_prefix: str = "cf"
    skip_schema_init: bool = False
    outbox: PostgresMapOutboxConfig = PostgresMapOutboxConfig()
    # Accepted for compatibility: Fugato's stream table is not partitioned (rows older than stream_retention
    # are deleted by the cleanup round instead).
    partition_lookahead_days: int = 2
    partition_retention_days: int = 7

    def validate(self) -> None:
        if not self.dsn:
            raise ConfigError("map_broker.postgres.dsn is required for map_broker.type \"postgres\"")
        if not self.table_prefix.isidentifier() or not self.table_prefix.isascii():
            raise ConfigError("map_broker.postgres.table_prefix must be a plain SQL identifier (letters, digits, _)")
        if self.pool_size < 1 or self.num_shards < 1 or self.outbox.batch_size < 1:
            raise ConfigError("map_broker.postgres: pool_size, num_shards and outbox.batch_size must be positive")
        if self.outbox.poll_interval <= 0 or self.stream_retention <= 0:
            raise ConfigError("map_broker.postgres: outbox.poll_interval and stream_retention must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class MapBrokerConfig:
    type: str = "memory"
    redis: RedisMapBrokerConfig = RedisMapBrokerConfig()
    postgres: PostgresMapBrokerConfig = PostgresMapBrokerConfig()

    def __post_init__(self) -> None:
        if self.type not in MAP_BROKER_TYPES:
            raise ConfigError(f"unknown map broker type: {self.type!r} (\"memory\", \"redis\" or \"postgres\")")
        if self.type == "postgres":
            self.postgres.validate()

    def _per_type(self, redis: float, postgres: float, memory: float) -> float:
        return redis if self.type == "redis" else postgres if self.type == "postgres" else memory

    @property
    def cleanup_interval(self) -> float:
        """How often this node looks for expired keys (0 or less: never)."""
        return self._per_type(self.redis.cleanup_interval, self.postgres.ttl_check_interval, MEMORY_CLEANUP_INTERVAL)

    @property
    def idempotent_result_ttl(self) -> float:
        """How long a map write's idempotency key answers "suppressed" (Centrifugo's memory map broker: 5 min)."""
        return self._per_type(self.redis.idempotent_result_ttl, self.postgres.idempotent_result_ttl,
                              MEMORY_IDEMPOTENT_RESULT_TTL)

    @property
    def cleanup_batch_size(self) -> int:
        return self.redis.cleanup_batch_size if self.type == "redis" else MEMORY_CLEANUP_BATCH_SIZE
