"""The memory map state's paging and expiry, the validation of a namespace's ``map`` options and of the
``map_broker`` section, and which broker map channels get."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import pytest

from node.broker.factory import build_engine
from node.broker.memory import MemoryBroker
from node.broker.postgres_map import PostgresMapBroker
from node.broker.redis import RedisBroker
from node.broker.routed import RoutedBroker
from node.config import ChannelConfig, Config, spans_processes
from node.config_load import LoadResult, load
from node.errors import ConfigError
from node.maps.state import Entry, MemoryMapState


def load_data(data: dict[str, Any]) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(data, fh)
    try:
        return load(fh.name, {}, {})
    finally:
        os.unlink(fh.name)


def _load(data: dict[str, Any]) -> Config:
    return load_data(data).config


def test_pages_walk_every_key_once_in_key_order() -> None:
    state = MemoryMapState()
    for i in range(23):
        state.set("c", f"k{i:02d}", Entry(b"{}", i + 1))
    # Past its TTL, but listed until the expiry round announces its removal (as Centrifugo's brokers list it).
    state.set("c", "k05", Entry(b"{}", 99, expire_at=time.monotonic() - 1))
    seen: list[str] = []
    cursor = ""
    while True:
        page, cursor = state.page("c", cursor, 5)
        seen.extend(k for k, _ in page)
        if not cursor:
            break
    assert seen == [f"k{i:02d}" for i in range(23)]
    assert state.expired(time.monotonic(), 10) == [("c", "k05")]
    assert state.remove("c", "k05") and not state.remove("c", "k05")


@pytest.mark.parametrize("map_options, error", [
    ({}, "map.mode"),
    ({"mode": "ephemeral"}, "key_ttl"),
    ({"mode": "persistent", "client_key": "nope"}, "client_key"),
])
def test_bad_map_options_are_config_errors(map_options: dict[str, object], error: str) -> None:
    data = {"channel": {"namespaces": [{"name": "m1", "subscription_type": "map", "map": map_options}]}}
    with pytest.raises(ConfigError, match=error):
        _load(data)


def test_map_keys_centrifugo_does_not_know_load_with_its_warning() -> None:
    """``map.external_state`` and ``map.ordered`` are in no Centrifugo v6.8+ config (docs or code): Centrifugo
    warns about them as unknown keys and runs, and so does Fugato (a recoverable map is not refused for them)."""
    result = load_data({"channel": {"namespaces": [{
        "name": "m1", "subscription_type": "map",
        "map": {"mode": "recoverable", "key_ttl": "10s", "external_state": True, "ordered": True}}]}})
    assert result.config.channel.namespaces[0].map.mode == "recoverable"
    assert sorted(w for w in result.warnings if "map." in w) == [
        "unknown config key: channel.namespaces[m1].map.external_state",
        "unknown config key: channel.namespaces[m1].map.ordered"]


def test_centrifugo_map_example_config_loads() -> None:
    config = _load({
        "map_broker": {"type": "memory"},
        "channel": {"namespaces": [{
            "name": "cursors", "subscription_type": "map", "publication_data_format": "json_object",
            "allow_subscribe_for_client": True,
            "map": {"mode": "ephemeral", "key_ttl": "60s", "allow_publish_for_subscriber": True,
                    "client_key": "client_id"},
        }]},
    })
    ns = config.channel.namespaces[0]
    assert ns.subscription_type == "map" and ns.map.key_ttl == 60.0 and ns.map.client_key == "client_id"


def test_centrifugo_map_broker_examples_load_without_warnings() -> None:
    """The map_broker examples of centrifugal.dev's map subscriptions page, as printed there."""
    examples = [
        {"map_broker": {"type": "memory"}},
        {"map_broker": {"type": "redis", "redis": {"address": "localhost:6379"}}},
        {"map_broker": {"type": "postgres",
                        "postgres": {"dsn": "postgres://user:pass@localhost:5432/dbname?sslmode=disable"}}},
        {"map_broker": {"type": "redis", "redis": {"address": "localhost:6379", "cleanup_interval": -1,
                                                    "cleanup_batch_size": 50, "idempotent_result_ttl": "1m"}}},
        {"map_broker": {"type": "postgres", "postgres": {
            "dsn": "postgres://localhost/db", "pool_size": 4, "num_shards": 2, "ttl_check_interval": "500ms",
            "cleanup_interval": "30s", "binary_data": True, "table_prefix": "myapp", "stream_retention": "1h",
            "use_notify": True, "notify_dsn": "postgres://direct/db", "skip_schema_init": False,
            "partition_lookahead_days": 2, "partition_retention_days": 0,
            "outbox": {"poll_interval": "50ms", "batch_size": 500}}}},
    ]
    for data in examples:
        result = load_data(data)
        assert result.warnings == (), data
    cfg = load_data(examples[4]).config.map_broker
    assert cfg.cleanup_interval == 0.5 and cfg.postgres.outbox.poll_interval == 0.05
    assert load_data(examples[3]).config.map_broker.cleanup_interval < 0
    assert load_data(examples[0]).config.map_broker.cleanup_interval == 1.0


@pytest.mark.parametrize(("map_broker", "error"), [
    ({"type": "nats"}, "unknown map broker type"),
    ({"type": "postgres"}, "dsn is required"),
    ({"type": "postgres", "postgres": {"dsn": "postgres://x/y", "table_prefix": "a-b"}}, "table_prefix"),
    ({"type": "redis", "redis": {"cleanup_batch_size": 0}}, "cleanup_batch_size"),
])
def test_bad_map_broker_sections_are_config_errors(map_broker: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        _load({"map_broker": map_broker})


MAP_NS: Final = {"name": "board", "subscription_type": "map", "map": {"mode": "persistent"}}


@pytest.mark.parametrize(("data", "maps"), [
    ({}, None),  # memory: next to the memory engine's streams
    ({"engine": {"type": "redis"}}, None),  # memory: next to the Redis engine's streams
    ({"engine": {"type": "redis"}, "map_broker": {"type": "redis"}}, None),  # the engine's own Redis
    ({"map_broker": {"type": "redis"}}, RedisBroker),
    ({"engine": {"type": "redis"}, "map_broker": {"type": "redis", "redis": {"prefix": "maps"}}}, RedisBroker),
    ({"broker": {"enabled": True, "type": "nats"}}, None),  # no map namespace
    ({"broker": {"enabled": True, "type": "nats"}, "channel": {"namespaces": [MAP_NS]}}, MemoryBroker),
    ({"broker": {"enabled": True, "type": "nats"}, "map_broker": {"type": "redis"}}, RedisBroker),
    ({"map_broker": {"type": "postgres", "postgres": {"dsn": "postgres://x/y"}}}, PostgresMapBroker),
])
def test_map_channels_get_the_broker_map_broker_asks_for(data: dict[str, Any], maps: type | None) -> None:
    engine = build_engine(_load(data), "n1")
    if maps is None:
        assert engine.map_broker is None and not isinstance(engine.broker, RoutedBroker)
    else:
        assert isinstance(engine.map_broker, maps) and isinstance(engine.broker, RoutedBroker)
        assert engine.broker.maps is engine.map_broker


@pytest.mark.parametrize("name", ["config.maps.json", "config.maps.postgres.json"])
def test_shipped_maps_config_loads_cleanly(name: str) -> None:
    result = load(str(Path(__file__).resolve().parents[2] / "conf" / name), {}, {})
    assert result.warnings == ()
    assert result.config.map_broker.type == ("postgres" if "postgres" in name else "memory")
    cursors, board, *presence = result.config.channel.namespaces
    assert cursors.map.mode == "ephemeral" and cursors.map.remove_client_on_unsubscribe
    assert board.map.recoverable and board.map.effective_stream_size == 1000
    # config.maps.json also shows map presence (a game's clients and users), tags filters, publish debounce and
    # fossil delta per key.
    assert "postgres" in name or ("fossil" in board.allowed_delta_types and board.delta_publish)
    assert [ns.subscription_type for ns in presence] == ([] if "postgres" in name else
                                                         ["map", "map_clients", "map_users"])


@pytest.mark.parametrize(("map_broker", "shared"), [({}, False), ({"type": "redis"}, True)])
def test_map_state_in_memory_keeps_workers_apart(map_broker: dict[str, Any], shared: bool) -> None:
    """With the NATS broker and Redis presence, several workers share everything but an in-process map state."""
    config = _load({"broker": {"enabled": True, "type": "nats"},
                    "presence_manager": {"enabled": True, "type": "redis"}, "map_broker": map_broker,
                    "channel": {"namespaces": [MAP_NS]}})
    assert spans_processes(config) is shared
    assert spans_processes(dataclasses.replace(config, channel=ChannelConfig())), "no map namespace: shared"
