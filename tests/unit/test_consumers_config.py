"""The ``consumers`` array: Centrifugo v6's examples load unchanged; bad or unsupported consumers are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.config_load import load
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
