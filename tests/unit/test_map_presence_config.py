"""Config checks of map presence and the namespace options next to it, as Centrifugo makes them at load:
prefixes lead to a namespace of the matching presence type, presence maps need a key TTL, ephemeral maps have no
stream options, a map's meta TTL is not shorter than its stream TTL; and the checks Centrifugo leaves to run time
(a meta TTL shorter than the key TTL), which the config passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.config import Config
from node.config_load import load
from node.errors import ConfigError
from node.maps.options import PERMANENT


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
    # Centrifugo's load-time checks of map options (internal/config/validate.go).
    (({**USERS, "map": {"mode": "ephemeral", "key_ttl": "60s", "meta_ttl": "30s"}},),
     "map.meta_ttl must be 0 for map.mode \"ephemeral\""),
    (({**USERS, "map": {"mode": "ephemeral", "key_ttl": "60s", "stream_size": 5}},), "map.stream_size must be 0"),
    (({**USERS, "map": {"mode": "ephemeral", "key_ttl": "60s", "stream_ttl": "1s"}},), "map.stream_ttl must be 0"),
    (({"name": "kept", "subscription_type": "map", "map": {"mode": "persistent", "key_ttl": "1h"}},),
     "key_ttl must not be set"),
    (({"name": "kept", "subscription_type": "map", "map": {"mode": "persistent", "meta_ttl": "30s"}},),
     r"meta_ttl \(30s\) must be >= map.stream_ttl \(60s\)"),
    (({**CLIENTS, "map": {"mode": "recoverable", "key_ttl": "60s", "stream_ttl": "2m", "meta_ttl": "90s"}},),
     r"meta_ttl \(90s\) must be >= map.stream_ttl \(120s\)"),
    (({"name": "chat", "map": {"mode": "sometimes"}},), "map.mode must be one of"),
    (({"name": "chat", "map": {"remove_client_on_unsubscribe": True}},),
     "remove_client_on_unsubscribe requires subscription_type to be a map type"),
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


@pytest.mark.parametrize(("options", "error"), [
    # Loaded as Centrifugo loads them; every operation on such a map then fails (centrifuge's
    # ResolveAndValidateMapChannelOptions, checked per operation).
    ({"mode": "persistent", "meta_ttl": "1h"}, "map.meta_ttl must be 0 (permanent) when map.key_ttl is 0"),
    ({"mode": "recoverable", "key_ttl": "2h", "meta_ttl": "1h"}, "map.meta_ttl must be >= map.key_ttl"),
    ({"mode": "recoverable", "key_ttl": "1h", "meta_ttl": "1h"}, ""),
    ({"mode": "persistent"}, ""),
    ({"mode": "ephemeral", "key_ttl": "1h"}, ""),
])
def test_map_options_refused_only_at_run_time_load(options: dict[str, Any], error: str,
                                                              tmp_path: Path) -> None:
    config = _config(tmp_path, {"name": "kept", "subscription_type": "map", "map": options})
    assert config.channel.namespaces[0].map.run_time_error().startswith(error)
    assert bool(config.channel.namespaces[0].map.run_time_error()) == bool(error)


@pytest.mark.parametrize(("options", "meta_ttl"), [
    # Centrifugo's derived meta_ttl: ten stream TTLs, at least key_ttl, when keys expire; permanent otherwise.
    ({"mode": "recoverable", "key_ttl": "60s"}, 600.0),
    ({"mode": "recoverable", "key_ttl": "60s", "stream_ttl": "5m"}, 3000.0),
    ({"mode": "recoverable", "key_ttl": "2h"}, 7200.0),
    ({"mode": "recoverable", "key_ttl": "60s", "meta_ttl": "90s"}, 90.0),
    ({"mode": "persistent"}, PERMANENT),
    ({"mode": "persistent", "meta_ttl": "1h"}, 3600.0),
])
def test_the_effective_meta_ttl_is_centrifugos(options: dict[str, Any], meta_ttl: float, tmp_path: Path) -> None:
    config = _config(tmp_path, {"name": "kept", "subscription_type": "map", "map": options})
    assert config.channel.namespaces[0].map.effective_meta_ttl == meta_ttl
