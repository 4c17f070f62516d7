"""Centrifugo v6's ``broker`` and ``presence_manager`` sections: parsing, validation, and the engine each
combination builds."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from node.broker.factory import StandaloneRedisPresenceManager, build_engine
from node.broker.memory import MemoryBroker, MemoryPresenceManager
from node.broker.nats import NatsBroker
from node.broker.redis import RedisBroker
from node.broker.redis_presence import RedisPresenceManager
from node.config_load import LoadResult, load, to_json_dict
from node.errors import ConfigError

# As on centrifugal.dev ("Engines and scalability": NATS broker with a Redis presence manager).
DOCS_EXAMPLE = {
    "broker": {"enabled": True, "type": "nats", "nats": {"url": "nats://localhost:4222"}},
    "presence_manager": {"enabled": True, "type": "redis", "redis": {"address": "localhost:6379"}},
}


def _load(data: dict[str, object], env: dict[str, str] | None = None) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(data))
        return load(str(path), env or {}, {})


def test_docs_example_loads_without_warnings_and_builds_nats_with_redis_presence() -> None:
    result = _load(DOCS_EXAMPLE)
    assert result.warnings == ()
    broker = result.config.broker
    assert (broker.enabled, broker.type, broker.nats.url, broker.nats.prefix) == (True, "nats", "nats://localhost:4222",
                                                                                  "centrifugo")
    assert (broker.nats.dial_timeout, broker.nats.write_timeout) == (1.0, 1.0)
    assert result.config.presence_manager.redis.address == ("localhost:6379",)
    engine = build_engine(result.config, "n1")
    assert isinstance(engine.broker, NatsBroker)
    assert isinstance(engine.presence, StandaloneRedisPresenceManager)


def test_raw_mode_wildcards_and_env() -> None:
    result = _load({"broker": {"enabled": True, "type": "nats", "nats": {
        "allow_wildcards": True,
        "raw_mode": {"enabled": True, "channel_replacements": {":": "."}, "prefix": "raw."}}}},
        env={"CENTRIFUGO_BROKER_NATS_PREFIX": "other", "CENTRIFUGO_BROKER_NATS_DIAL_TIMEOUT": "250ms"})
    nats = result.config.broker.nats
    assert nats.allow_wildcards and nats.raw_mode.enabled
    assert nats.raw_mode.channel_replacements == {":": "."}
    assert (nats.prefix, nats.dial_timeout) == ("other", 0.25)
    broker = NatsBroker(nats, node_id="n1")
    assert broker.subject("chat:index") == "raw.chat.index"
    assert to_json_dict(result.config)["broker"]["nats"]["raw_mode"]["channel_replacements"] == {":": "."}
    replacements = _load({}, env={"CENTRIFUGO_BROKER_NATS_RAW_MODE_CHANNEL_REPLACEMENTS": '{"$": "_"}'})
    assert replacements.config.broker.nats.raw_mode.channel_replacements == {"$": "_"}


def test_plain_subjects_follow_centrifugo() -> None:
    broker = NatsBroker(_load({}).config.broker.nats, node_id="n1")
    assert broker.subject("chat:index") == "centrifugo.client.chat:index"


@pytest.mark.parametrize(("section", "message"), [
    ({"broker": {"type": "kafka"}}, "broker.type"),
    ({"presence_manager": {"type": "nats"}}, "presence_manager.type"),
    ({"broker": {"nats": {"prefix": "a b"}}}, "broker.nats.prefix"),
    ({"broker": {"nats": {"raw_mode": {"channel_replacements": {":": 1}}}}}, "channel_replacements"),
    ({"broker": {"nats": {"raw_mode": {"enabled": True}, "jetstream": {"enabled": True}}}}, "cannot be combined"),
    ({"broker": {"nats": {"jetstream": {"storage": "disk"}}}}, "jetstream.storage"),
])
def test_invalid_values_are_config_errors(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(section)


def test_history_namespace_warns_without_jetstream_only() -> None:
    history = {"channel": {"namespaces": [{"name": "chat", "history_size": 5, "history_ttl": "30s"}]}}
    plain = _load({**DOCS_EXAMPLE, **history})
    assert any("channel.namespaces[chat]" in w and "108" in w for w in plain.warnings)
    js = _load({**history, "broker": {"enabled": True, "type": "nats", "nats": {"jetstream": {"enabled": True}}}})
    assert js.warnings == ()


def test_engine_combinations() -> None:
    redis_broker_memory_engine = _load({"broker": {"enabled": True, "type": "redis"}}).config
    engine = build_engine(redis_broker_memory_engine, "n1")
    assert isinstance(engine.broker, RedisBroker) and isinstance(engine.presence, MemoryPresenceManager)
    redis_engine = _load({"engine": {"type": "redis"}}).config
    engine = build_engine(redis_engine, "n1")
    assert isinstance(engine.broker, RedisBroker) and type(engine.presence) is RedisPresenceManager
    redis_engine_nats_broker = _load({"engine": {"type": "redis"}, "broker": DOCS_EXAMPLE["broker"]}).config
    engine = build_engine(redis_engine_nats_broker, "n1")
    assert isinstance(engine.broker, NatsBroker) and isinstance(engine.presence, StandaloneRedisPresenceManager)
    disabled = _load({"broker": {"type": "nats"}}).config  # not enabled: the engine's broker stays
    assert isinstance(build_engine(disabled, "n1").broker, MemoryBroker)


def test_shipped_nats_config_loads_cleanly() -> None:
    result = load(str(Path(__file__).resolve().parents[2] / "conf" / "config.nats.json"), {}, {})
    assert result.warnings == ()
    nats = result.config.broker.nats
    assert nats.jetstream.enabled and nats.url == "nats://127.0.0.1:4222"
    assert result.config.presence_manager.type == "redis"
