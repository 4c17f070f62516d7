"""The memory map state's paging and expiry, and the validation of a namespace's ``map`` options."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from node.config import Config
from node.config_load import load
from node.errors import ConfigError
from node.maps.state import Entry, MemoryMapState


def _load(data: dict[str, Any]) -> Config:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(data, fh)
    try:
        return load(fh.name, {}, {}).config
    finally:
        os.unlink(fh.name)


def test_pages_walk_every_live_key_once_in_key_order() -> None:
    state = MemoryMapState()
    for i in range(23):
        state.set("c", f"k{i:02d}", Entry(b"{}", i + 1))
    state.set("c", "k05", Entry(b"{}", 99, expire_at=time.monotonic() - 1))  # expired: skipped
    seen: list[str] = []
    cursor = ""
    while True:
        page, cursor = state.page("c", cursor, 5)
        seen.extend(k for k, _ in page)
        if not cursor:
            break
    assert seen == [f"k{i:02d}" for i in range(23) if i != 5]
    assert state.expired(time.monotonic(), 10) == [("c", "k05")]
    assert state.remove("c", "k05") and not state.remove("c", "k05")


@pytest.mark.parametrize("map_options, error", [
    ({}, "map.mode"),
    ({"mode": "ephemeral"}, "key_ttl"),
    ({"mode": "persistent", "client_key": "nope"}, "client_key"),
    ({"mode": "durable", "key_ttl": "10s", "external_state": True}, "external_state"),
])
def test_bad_map_options_are_config_errors(map_options: dict[str, object], error: str) -> None:
    data = {"channel": {"namespaces": [{"name": "m1", "subscription_type": "map", "map": map_options}]}}
    with pytest.raises(ConfigError, match=error):
        _load(data)


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


def test_map_state_follows_the_engine() -> None:
    ns = {"name": "m1", "subscription_type": "map", "map": {"mode": "persistent"}}
    with pytest.raises(ConfigError, match="needs the Redis engine"):
        _load({"map_broker": {"type": "redis"}})
    with pytest.raises(ConfigError, match="memory or the Redis engine"):
        _load({"broker": {"enabled": True, "type": "nats"}, "channel": {"namespaces": [ns]}})
    redis = {"engine": {"type": "redis"}, "map_broker": {"type": "redis"}, "channel": {"namespaces": [ns]}}
    assert _load(redis).map_broker.type == "redis"


def test_shipped_maps_config_loads_cleanly() -> None:
    result = load(str(Path(__file__).resolve().parents[2] / "conf" / "config.maps.json"), {}, {})
    assert result.warnings == ()
    cursors, board = result.config.channel.namespaces
    assert cursors.map.mode == "ephemeral" and cursors.map.remove_client_on_unsubscribe
    assert board.map.recoverable and board.map.effective_stream_size == 1000
