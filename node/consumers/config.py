"""The ``consumers`` array of a Centrifugo v6 config: one object per consumer, with a section per type.

Keys, nesting and defaults are Centrifugo v6's. Types Fugato cannot consume yet (``kafka``, ``google_pub_sub``,
``aws_sqs``, ``azure_service_bus``) are accepted while disabled; enabling one stops the server with a
``ConfigError`` naming it, so a consumer never silently does nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Final

from node.config_fields import RedisConnectionConfig, duration, keyed
from node.errors import ConfigError

NAME_RE: Final = re.compile(r"^[a-zA-Z0-9_]{2,}$")
SUPPORTED_TYPES: Final = ("postgresql", "redis_stream", "nats_jetstream")
UNSUPPORTED_TYPES: Final = ("kafka", "google_pub_sub", "aws_sqs", "azure_service_bus")



@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresConsumerConfig:
    dsn: str = ""
    outbox_table_name: str = ""
    num_partitions: int = 1
    partition_select_limit: int = 100
    partition_poll_interval: float = duration(0.3)
    partition_notification_channel: str = ""
    partition_notification_dsn: str = ""
    # Accepted for compatibility: Fugato never waits on a partition lock (rows are claimed with
    # FOR UPDATE SKIP LOCKED), which is what use_try_lock asks Centrifugo for.
    use_try_lock: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicationDataModeConfig:
    """Which message attributes carry a publication's target and options (node/consumers/publication_mode.py).
    The keys name the attribute kind: ``channels_value`` for a Redis Stream entry's field, ``channels_header``
    for a NATS header (the subclasses' ``KEY_WORD``)."""

    KEY_WORD: ClassVar[str]
    enabled: bool = False
    channels: str = keyed("centrifugo-channels", "channels_{}")
    idempotency_key: str = keyed("centrifugo-idempotency-key", "idempotency_key_{}")
    delta: str = keyed("centrifugo-delta", "delta_{}")
    version: str = keyed("centrifugo-version", "version_{}")
    version_epoch: str = keyed("centrifugo-version-epoch", "version_epoch_{}")
    tags_prefix: str = keyed("centrifugo-tag-", "tags_{}_prefix")


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisStreamPublicationDataModeConfig(PublicationDataModeConfig):
    KEY_WORD: ClassVar[str] = "value"


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsJetStreamPublicationDataModeConfig(PublicationDataModeConfig):
    KEY_WORD: ClassVar[str] = "header"


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisStreamConsumerConfig(RedisConnectionConfig):
    client_name: str = ""
    force_resp2: bool = False
    streams: tuple[str, ...] = ()
    consumer_group: str = ""
    visibility_timeout: float = duration(30.0)
    num_workers: int = 1
    payload_value: str = "payload"
    method_value: str = "method"
    publication_data_mode: RedisStreamPublicationDataModeConfig = RedisStreamPublicationDataModeConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConnectionConfig:
    """Where a NATS server is and how to log in (a credentials file, a user and password, or a token)."""

    url: str = "nats://127.0.0.1:4222"
    credentials_file: str = ""
    username: str = ""
    password: str = ""
    token: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsJetStreamConsumerConfig(NatsConnectionConfig):
    stream_name: str = ""
    subjects: tuple[str, ...] = ()
    durable_consumer_name: str = ""
    deliver_policy: str = "new"
    max_ack_pending: int = 100
    method_header: str = "centrifugo-method"
    use_existing_consumer: bool = False
    publication_data_mode: NatsJetStreamPublicationDataModeConfig = NatsJetStreamPublicationDataModeConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaConsumerConfig:
    """Accepted so that a Centrifugo config loads; a Kafka consumer cannot be enabled yet."""

    brokers: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    consumer_group: str = ""
    max_poll_records: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerConfig:
    name: str = ""
    enabled: bool = False
    type: str = ""
    postgresql: PostgresConsumerConfig = PostgresConsumerConfig()
    redis_stream: RedisStreamConsumerConfig = RedisStreamConsumerConfig()
    nats_jetstream: NatsJetStreamConsumerConfig = NatsJetStreamConsumerConfig()
    kafka: KafkaConsumerConfig = KafkaConsumerConfig()

    def __post_init__(self) -> None:
        where = f"consumers[{self.name}]"
        if not NAME_RE.match(self.name):
            raise ConfigError(f"{where}: invalid consumer name {self.name!r} (must match ^[a-zA-Z0-9_]{{2,}}$)")
        if self.type not in SUPPORTED_TYPES + UNSUPPORTED_TYPES:
            raise ConfigError(f"{where}: unknown consumer type {self.type!r}")
        if not self.enabled:
            return
        if self.type in UNSUPPORTED_TYPES:
            raise ConfigError(f"{where}: consumer type {self.type!r} is not supported by Fugato yet "
                              f"(supported: {', '.join(SUPPORTED_TYPES)}); set enabled to false to keep it")
        getattr(self, "_validate_" + self.type)(where)

    def _validate_postgresql(self, where: str) -> None:
        pg = self.postgresql
        if not pg.dsn:
            raise ConfigError(f"{where}.postgresql.dsn is required")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", pg.outbox_table_name):
            raise ConfigError(f"{where}.postgresql.outbox_table_name is required: a table name, optionally "
                              f"schema-qualified (got {pg.outbox_table_name!r})")
        if pg.num_partitions < 1 or pg.partition_select_limit < 1 or pg.partition_poll_interval <= 0:
            raise ConfigError(f"{where}.postgresql: num_partitions, partition_select_limit and "
                              "partition_poll_interval must be positive")

    def _validate_redis_stream(self, where: str) -> None:
        rs = self.redis_stream
        if not rs.streams or not all(rs.streams):
            raise ConfigError(f"{where}.redis_stream.streams is required")
        if not rs.consumer_group:
            raise ConfigError(f"{where}.redis_stream.consumer_group is required")
        if len(rs.address) != 1:
            raise ConfigError(f"{where}.redis_stream.address: exactly one Redis address is supported")
        if rs.num_workers < 1 or rs.visibility_timeout <= 0 or not rs.payload_value:
            raise ConfigError(f"{where}.redis_stream: num_workers and visibility_timeout must be positive, "
                              "payload_value non-empty")

    def _validate_nats_jetstream(self, where: str) -> None:
        js = self.nats_jetstream
        if not js.stream_name or not js.durable_consumer_name:
            raise ConfigError(f"{where}.nats_jetstream: stream_name and durable_consumer_name are required")
        if js.deliver_policy not in ("new", "all"):
            raise ConfigError(f"{where}.nats_jetstream.deliver_policy must be \"new\" or \"all\"")
        if js.max_ack_pending < 1:
            raise ConfigError(f"{where}.nats_jetstream.max_ack_pending must be positive")


def check_unique_names(consumers: tuple[ConsumerConfig, ...]) -> None:
    names = [c.name for c in consumers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"consumers: duplicate names {', '.join(dupes)}")
