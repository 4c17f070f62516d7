"""The ``consumers`` array: Centrifugo v6's examples load unchanged; bad or unsupported consumers are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.config_load import load, to_json_dict
from node.errors import ConfigError

# From Centrifugo v6's "Async consumers" page, unchanged.
DOCS_POSTGRESQL = {
    "enabled": True, "name": "my_postgresql_consumer", "type": "postgresql",
    "postgresql": {"dsn": "postgresql://user:password@localhost:5432/db", "outbox_table_name": "centrifugo_outbox",
                   "num_partitions": 1, "partition_select_limit": 100, "partition_poll_interval": "300ms",
                   "partition_notification_channel": "centrifugo_partition_change"},
}
DOCS_KAFKA = {
    "enabled": True, "name": "my_kafka_consumer", "type": "kafka",
    "kafka": {"brokers": ["localhost:9092"], "topics": ["postgres.public.chat_cdc"], "consumer_group": "centrifugo"},
}


def load_consumers(tmp_path: Path, consumers: list[dict[str, Any]], env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"consumers": consumers}))
    return load(str(path), env or {}, {})


def test_docs_postgresql_example_loads_with_every_key(tmp_path: Path) -> None:
    result = load_consumers(tmp_path, [DOCS_POSTGRESQL])
    assert result.warnings == ()
    (c,) = result.config.consumers
    assert (c.name, c.enabled, c.type) == ("my_postgresql_consumer", True, "postgresql")
    pg = c.postgresql
    assert (pg.dsn, pg.outbox_table_name, pg.num_partitions, pg.partition_select_limit) == (
        "postgresql://user:password@localhost:5432/db", "centrifugo_outbox", 1, 100)
    assert pg.partition_poll_interval == pytest.approx(0.3)
    assert pg.partition_notification_channel == "centrifugo_partition_change"


def test_env_overrides_a_consumer_option_by_its_name(tmp_path: Path) -> None:
    env = {"CENTRIFUGO_CONSUMERS_MY_POSTGRESQL_CONSUMER_POSTGRESQL_DSN": "postgresql://other/db",
           "CENTRIFUGO_CONSUMERS_MY_POSTGRESQL_CONSUMER_POSTGRESQL_NUM_PARTITIONS": "8"}
    (c,) = load_consumers(tmp_path, [DOCS_POSTGRESQL], env).config.consumers
    assert (c.postgresql.dsn, c.postgresql.num_partitions) == ("postgresql://other/db", 8)
    whole = {"CENTRIFUGO_CONSUMERS": json.dumps([DOCS_POSTGRESQL])}
    assert load(None, whole, {}).config.consumers[0].name == "my_postgresql_consumer"


def test_kafka_is_accepted_disabled_and_refused_enabled(tmp_path: Path) -> None:
    (c,) = load_consumers(tmp_path, [{**DOCS_KAFKA, "enabled": False}]).config.consumers
    assert c.kafka.brokers == ("localhost:9092",) and not c.enabled
    with pytest.raises(ConfigError, match=r"consumers\[my_kafka_consumer\].*'kafka' is not supported"):
        load_consumers(tmp_path, [DOCS_KAFKA])


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "x"}, "invalid consumer name"),
    ({"type": "rabbitmq"}, "unknown consumer type"),
    ({"postgresql": {"dsn": "postgresql://h/db"}}, "outbox_table_name is required"),
    ({"postgresql": {"outbox_table_name": "t"}}, "dsn is required"),
    ({"postgresql": {**DOCS_POSTGRESQL["postgresql"], "outbox_table_name": "t; drop table x"}}, "outbox_table_name"),
    ({"postgresql": {**DOCS_POSTGRESQL["postgresql"], "num_partitions": 0}}, "must be positive"),
])
def test_invalid_consumers_are_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_consumers(tmp_path, [{**DOCS_POSTGRESQL, **change}])


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate names my_postgresql_consumer"):
        load_consumers(tmp_path, [DOCS_POSTGRESQL, DOCS_POSTGRESQL])


def test_redis_stream_and_nats_jetstream_load_with_their_keys(tmp_path: Path) -> None:
    redis_stream = {"enabled": True, "name": "rs", "type": "redis_stream", "redis_stream": {
        "address": ["redis://127.0.0.1:6379"], "streams": ["s1", "s2"], "consumer_group": "centrifugo",
        "visibility_timeout": "10s", "num_workers": 2, "payload_value": "payload", "method_value": "method",
        "publication_data_mode": {"enabled": True, "channels_value": "to", "tags_value_prefix": "tag-"}}}
    jetstream = {"enabled": True, "name": "js", "type": "nats_jetstream", "nats_jetstream": {
        "url": "nats://127.0.0.1:4222", "stream_name": "S", "subjects": ["a.>"], "durable_consumer_name": "d",
        "deliver_policy": "all", "max_ack_pending": 1, "method_header": "centrifugo-method",
        "use_existing_consumer": True, "publication_data_mode": {"enabled": True, "channels_header": "to"}}}
    result = load_consumers(tmp_path, [redis_stream, jetstream])
    assert result.warnings == ()
    rs, js = result.config.consumers
    assert (rs.redis_stream.streams, rs.redis_stream.visibility_timeout, rs.redis_stream.num_workers) == (
        ("s1", "s2"), 10.0, 2)
    assert (rs.redis_stream.publication_data_mode.channels, rs.redis_stream.publication_data_mode.tags_prefix) == (
        "to", "tag-")
    assert (js.nats_jetstream.publication_data_mode.channels, js.nats_jetstream.publication_data_mode.delta) == (
        "to", "centrifugo-delta")
    assert (js.nats_jetstream.subjects, js.nats_jetstream.max_ack_pending, js.nats_jetstream.use_existing_consumer) == (
        ("a.>",), 1, True)
    with pytest.raises(ConfigError, match="consumer_group is required"):
        load_consumers(tmp_path, [{**redis_stream, "redis_stream": {"streams": ["s"]}}])
    with pytest.raises(ConfigError, match="deliver_policy"):
        load_consumers(tmp_path, [{**jetstream, "nats_jetstream": {**jetstream["nats_jetstream"],
                                                                    "deliver_policy": "last"}}])



@pytest.mark.parametrize(("section", "word", "other"), [("redis_stream", "value", "header"),
                                                         ("nats_jetstream", "header", "value")])
def test_publication_data_mode_keys_are_spelled_per_consumer_type(tmp_path: Path, section: str, word: str,
                                                                  other: str) -> None:
    """One declaration, two spellings: ``*_value`` for Redis Stream entries, ``*_header`` for NATS headers."""
    templates = ("channels_{}", "idempotency_key_{}", "delta_{}", "version_{}", "version_epoch_{}", "tags_{}_prefix")
    mode = {"enabled": True, **{t.format(word): "x-" + t.format("") for t in templates}}
    required = {"consumer_group": "g", "streams": ["s"]} if section == "redis_stream" else {
        "stream_name": "S", "durable_consumer_name": "d"}
    consumer = {"enabled": True, "name": "cc", "type": section, section: {**required, "publication_data_mode": mode}}
    result = load_consumers(tmp_path, [consumer])
    assert result.warnings == ()
    (c,) = result.config.consumers
    loaded = getattr(c, section).publication_data_mode
    assert (loaded.channels, loaded.tags_prefix, loaded.version_epoch) == ("x-channels_", "x-tags__prefix",
                                                                          "x-version_epoch_")
    assert to_json_dict(c)[section]["publication_data_mode"] == mode  # written back with the keys it was read by
    env = {f"CENTRIFUGO_CONSUMERS_CC_{section.upper()}_PUBLICATION_DATA_MODE_CHANNELS_{word.upper()}": "from-env"}
    assert getattr(load_consumers(tmp_path, [consumer], env).config.consumers[0], section) \
        .publication_data_mode.channels == "from-env"
    wrong = {**consumer, section: {**required, "publication_data_mode": {"channels_" + other: "y"}}}
    assert load_consumers(tmp_path, [wrong]).warnings == (
        f"unknown config key: consumers[cc].{section}.publication_data_mode.channels_{other}",)
