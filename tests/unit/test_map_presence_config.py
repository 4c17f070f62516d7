"""Config checks of map presence and the namespace options next to it, as Centrifugo makes them at load:
prefixes lead to a namespace of the matching presence type, presence maps need a key TTL, a map's meta TTL is
not shorter than its key TTL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.config import Config
from node.config_load import load
from node.errors import ConfigError


def config_from_dict(data: dict[str, Any], tmp: Path) -> Config:
    path = tmp / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = load(str(path), {}, {})
    assert not result.warnings, result.warnings  # every key is known
    return result.config


def _config(tmp: Path, *namespaces: dict[str, Any]) -> Config:
    return config_from_dict({"channel": {"namespaces": list(namespaces)}}, tmp)


GAME = {"name": "game", "subscription_type": "map", "map": {"mode": "ephemeral", "key_ttl": "60s"},
        "map_clients_presence_channel_prefix": "clients:", "map_users_presence_channel_prefix": "users:"}
CLIENTS = {"name": "clients", "subscription_type": "map_clients", "map": {"mode": "recoverable", "key_ttl": "60s"}}
USERS = {"name": "users", "subscription_type": "map_users", "map": {"mode": "ephemeral", "key_ttl": "60s"}}


def test_the_documented_presence_example_loads(tmp_path: Path) -> None:
    config = _config(tmp_path, GAME, CLIENTS, USERS)
    game = config.channel.namespaces[0]
    assert game.map_clients_presence_channel_prefix == "clients:"
    assert config.channel.namespaces[1].map.recoverable


@pytest.mark.parametrize(("namespaces", "message"), [
    ((GAME, USERS), "namespace 'clients' does not exist"),
    ((GAME, {**CLIENTS, "name": "users"}, {**USERS, "name": "clients"}), "must have subscription_type 'map_clients'"),
    (({**CLIENTS, "map": {"mode": "persistent"}},), "not allowed with subscription_type 'map_clients'"),
    (({**USERS, "map": {"mode": "recoverable"}},), "key_ttl is required"),
    (({"name": "chat", "client_publish_debounce_interval": "-1s"},), "must not be negative"),
    (({**USERS, "map": {"mode": "ephemeral", "key_ttl": "60s", "meta_ttl": "30s"}},),
     "meta_ttl must be >= map.key_ttl"),
    (({"name": "kept", "subscription_type": "map", "map": {"mode": "persistent", "meta_ttl": "1h"}},),
     "meta_ttl must be 0"),
    (({"name": "cur", "subscription_type": "map", "map": {"mode": "ephemeral", "key_ttl": "9s",
                                                          "client_key": "client_id", "publish_proxy_enabled": True}},),
     "client_key is not compatible"),
])
def test_bad_presence_configs_are_refused(namespaces: tuple[dict[str, Any], ...], message: str,
                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, *namespaces)


def test_a_prefix_without_boundary_names_the_channels_without_namespace(tmp_path: Path) -> None:
    config = config_from_dict({"channel": {"without_namespace": {"subscription_type": "map_clients",
                                                                  "map": {"mode": "ephemeral", "key_ttl": "9s"}},
                                           "namespaces": [{**GAME, "map_clients_presence_channel_prefix": "c-",
                                                           "map_users_presence_channel_prefix": ""}]}}, tmp_path)
    assert config.channel.namespaces[0].map_clients_presence_channel_prefix == "c-"
