"""The config loader: durations, layering (file → env → overrides), conversion errors and warnings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.config import ChannelOptions, Config, NamespaceConfig
from node.config_load import LoadResult, format_duration, known_keys, load, parse_duration, to_json_dict
from node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: Any, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def load_dict(tmp_path: Path, data: Any, env: dict[str, str] | None = None,
              overrides: dict[str, Any] | None = None) -> LoadResult:
    return load(write(tmp_path, data), env or {}, overrides or {})


# --- durations ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("25s", 25.0),
    ("1m30s", 90.0),
    ("720h", 720 * 3600.0),
    ("1000ms", 1.0),
    ("1.5h", 5400.0),
    ("-1s", -1.0),
    ("0", 0.0),
    ("0s", 0.0),
    ("300us", 0.0003),
    ("1h2m3.5s", 3723.5),
    (".5s", 0.5),
    (25_000_000_000, 25.0),  # JSON integers are nanoseconds
    (0, 0.0),
])
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "abc", "25", "1x", "s", "1s2", True, None, [1], 1.5])
def test_parse_duration_rejects_garbage(bad: Any) -> None:
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(bad)


def test_parse_duration_hints_missing_unit() -> None:
    with pytest.raises(ConfigError, match="missing unit"):
        parse_duration("30")


@pytest.mark.parametrize(("seconds", "text"), [
    (25.0, "25s"), (90.0, "1m30s"), (604800.0, "168h0m0s"), (1.0, "1s"), (0.0, "0s"), (0.5, "500ms"),
    (1.5, "1.5s"), (-1.0, "-1s"), (0.0003, "300\u00b5s"), (3600.0, "1h0m0s"),
])
def test_format_duration_like_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- defaults and files --------------------------------------------------------------------------------------------

def test_no_file_gives_defaults() -> None:
    result = load(None, {}, {})
    assert result.config == Config()
    assert result.warnings == ()
    assert result.config.http_server.port == 8000
    assert result.config.client.ping_interval == 25.0
    assert result.config.channel.history_meta_ttl == 720 * 3600.0


def test_empty_object_gives_defaults(tmp_path: Path) -> None:
    assert load_dict(tmp_path, {}).config == Config()


def test_nested_sections(tmp_path: Path) -> None:
    cfg = load_dict(tmp_path, {
        "http_server": {"port": 9001, "address": "127.0.0.1"},
        "client": {
            "token": {"hmac_secret_key": "s3cret", "audience": "aud"},
            "subscription_token": {"enabled": True, "hmac_secret_key": "sub"},
            "allowed_origins": ["https://a.example", "*"],
            "ping_interval": "30s",
            "pong_timeout": 10_000_000_000,
            "channel_limit": 5,
        },
        "rpc": {"ping": {"enabled": True}},
        "websocket": {"write_timeout": "1500ms"},
        "log": {"level": "debug"},
    }).config
    assert cfg.http_server.port == 9001
    assert cfg.http_server.address == "127.0.0.1"
    assert cfg.client.token.hmac_secret_key == "s3cret"
    assert cfg.client.token.audience == "aud"
    assert cfg.client.subscription_token.enabled is True
    assert cfg.client.allowed_origins == ("https://a.example", "*")
    assert cfg.client.ping_interval == 30.0
    assert cfg.client.pong_timeout == 10.0
    assert cfg.client.channel_limit == 5
    assert cfg.client.queue_max_size == 1048576  # untouched default
    assert cfg.rpc.ping.enabled is True
    assert cfg.rpc.ping.method == "ping"
    assert cfg.websocket.write_timeout == 1.5
    assert cfg.log.level == "debug"


def test_namespaces(tmp_path: Path) -> None:
    cfg = load_dict(tmp_path, {"channel": {
        "without_namespace": {"presence": True, "history_size": 10, "history_ttl": "60s"},
        "namespaces": [
            {"name": "chat", "presence": True, "history_size": 100, "history_ttl": "300s", "force_recovery": True,
             "allowed_delta_types": ["fossil"]},
            {"name": "news", "allow_subscribe_for_client": True},
        ],
    }}).config
    assert isinstance(cfg.channel.without_namespace, ChannelOptions)
    assert cfg.channel.without_namespace.history_enabled
    chat, news = cfg.channel.namespaces
    assert isinstance(chat, NamespaceConfig)
    assert (chat.name, chat.presence, chat.history_size, chat.history_ttl) == ("chat", True, 100, 300.0)
    assert chat.force_recovery is True
    assert chat.allowed_delta_types == ("fossil",)
    assert news.name == "news"
    assert news.allow_subscribe_for_client is True
    assert news.presence is False


def test_null_keeps_default(tmp_path: Path) -> None:
    assert load_dict(tmp_path, {"http_server": {"port": None}}).config.http_server.port == 8000


def test_sections_keep_the_paths_config_declares(tmp_path: Path) -> None:
    # Endpoint classes have no path default: Config gives each its path, and a file (or the environment) setting
    # other keys of the section keeps it.
    cfg = load_dict(tmp_path, {"http_stream": {"enabled": True}, "uni_sse": {"max_request_body_size": 10},
                               "health": {"enabled": False}, "websocket": {"compression": True}, "admin": {}},
                    env={"CENTRIFUGO_PROMETHEUS_ENABLED": "true"}).config
    assert (cfg.http_stream.enabled, cfg.http_stream.handler_prefix) == (True, "/connection/http_stream")
    assert (cfg.uni_sse.max_request_body_size, cfg.uni_sse.handler_prefix) == (10, "/connection/uni_sse")
    assert (cfg.health.enabled, cfg.health.handler_prefix) == (False, "/health")
    assert (cfg.websocket.compression, cfg.websocket.handler_prefix) == (True, "/connection/websocket")
    assert (cfg.prometheus.enabled, cfg.prometheus.handler_prefix) == (True, "/metrics")
    assert cfg.admin.handler_prefix == "" and cfg.sse.handler_prefix == "/connection/sse"
    assert cfg.uni_http_stream.handler_prefix == "/connection/uni_http_stream"


def test_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, (
        '[http_server]\nport = 8123\n\n[client]\nallowed_origins = ["*"]\nping_interval = "40s"\n\n'
        '[client.token]\nhmac_secret_key = "t"\n\n[[channel.namespaces]]\nname = "chat"\npresence = true\n'
    ), "config.toml")
    cfg = load(path, {}, {}).config
    assert cfg.http_server.port == 8123
    assert cfg.client.ping_interval == 40.0
    assert cfg.client.token.hmac_secret_key == "t"
    assert cfg.channel.namespaces[0].name == "chat"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(str(tmp_path / "nope.json"), {}, {})


def test_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_dict(tmp_path, '{"client": ')


def test_top_level_must_be_object(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level"):
        load_dict(tmp_path, "[]")


def test_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported config format"):
        load(write(tmp_path, "a: 1", "config.yaml"), {}, {})


# --- unknown keys ----------------------------------------------------------------------------------------------

def test_unknown_keys_warn_with_dotted_path(tmp_path: Path) -> None:
    result = load_dict(tmp_path, {
        "client": {"foo_bar": 1, "token": {"hmac_secret_key": "x", "extra": True}},
        "channel": {"namespaces": [{"name": "chat", "bogus": 1}]},
        "swagger": {"enabled": True},
        "whatever": 1,
    })
    assert result.config.client.token.hmac_secret_key == "x"
    text = "\n".join(result.warnings)
    assert "unknown config key: client.foo_bar" in text
    assert "unknown config key: client.token.extra" in text
    assert "unknown config key: channel.namespaces[chat].bogus" in text
    assert "unknown config key: swagger" in text
    assert "unknown config key: whatever" in text
    assert len(result.warnings) == 5


def test_admin_section_as_in_centrifugo_docs(tmp_path: Path) -> None:
    result = load_dict(tmp_path, {"admin": {
        "enabled": True, "password": "pw", "secret": "sec", "insecure": False, "handler_prefix": "/admin",
        "web_path": "", "web_proxy_address": "", "external": True}})
    assert result.warnings == ()
    admin = result.config.admin
    assert (admin.enabled, admin.password, admin.secret, admin.handler_prefix, admin.external) == (
        True, "pw", "sec", "/admin", True)


def test_v5_key_gets_hint(tmp_path: Path) -> None:
    (warning,) = load_dict(tmp_path, {"token_hmac_secret_key": "x"}).warnings
    assert "token_hmac_secret_key" in warning
    assert "client.token.hmac_secret_key" in warning


# --- invalid values --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "message"), [
    ({"client": {"channel_limit": "abc"}}, "client.channel_limit: expected integer, got 'abc'"),
    ({"client": {"insecure": "maybe"}}, "client.insecure: expected boolean"),
    ({"client": {"ping_interval": "soon"}}, "client.ping_interval: invalid duration"),
    ({"client": {"token": {"hmac_secret_key": 5}}}, "client.token.hmac_secret_key: expected string"),
    ({"client": {"allowed_origins": 5}}, "client.allowed_origins: expected array"),
    ({"client": {"allowed_origins": ["ok", 3]}}, r"client.allowed_origins\[1\]: expected string"),
    ({"client": 5}, "client: expected object"),
    ({"channel": {"namespaces": {"name": "x"}}}, "channel.namespaces: expected array"),
    ({"channel": {"namespaces": ["chat"]}}, r"channel.namespaces\[0\]: expected object"),
    ({"channel": {"namespaces": [{"name": "chat", "presence": "x"}]}},
     r"channel.namespaces\[chat\].presence: expected boolean"),
    ({"http_server": {"port": True}}, "http_server.port: expected integer"),
])
def test_wrong_types_name_the_key(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dict(tmp_path, data)


@pytest.mark.parametrize(("data", "message"), [
    ({"channel": {"without_namespace": {"history_size": 10}}}, "history_size and history_ttl must be set together"),
    ({"channel": {"namespaces": [{"name": "chat", "history_ttl": "10s"}]}},
     "history_size and history_ttl must be set together"),
    ({"channel": {"namespaces": [{"name": "chat", "force_recovery": True}]}}, "force_recovery requires history"),
    ({"channel": {"namespaces": [{"name": "x"}]}}, "invalid namespace name"),
    ({"channel": {"namespaces": [{"name": "aa"}, {"name": "aa"}]}}, "duplicate names aa"),
    ({"client": {"ping_interval": "5s", "pong_timeout": "8s"}}, "ping_interval must be greater than"),
    ({"client": {"ping_interval": "8s"}}, "ping_interval must be greater than"),
    ({"log": {"level": "loud"}}, "log.level"),
    ({"engine": {"type": "tarantool"}}, "engine.type"),
    ({"http_api": {"error_mode": "weird"}}, "http_api.error_mode"),
    ({"client": {"token": {"audience_regex": "("}}}, "invalid regular expression"),
])
def test_validation_errors_propagate(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dict(tmp_path, data)


# --- environment -------------------------------------------------------------------------------------------

def test_env_both_prefixes() -> None:
    cfg = load(None, {
        "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY": "from-env",
        "FUGATO_HTTP_API_KEY": "api",
        "FUGATO_HTTP_SERVER_PORT": "9100",
        "CENTRIFUGO_CLIENT_INSECURE": "true",
        "CENTRIFUGO_PROMETHEUS_ENABLED": "1",
        "CENTRIFUGO_HEALTH_ENABLED": "0",
        "CENTRIFUGO_CLIENT_PING_INTERVAL": "40s",
        "CENTRIFUGO_CLIENT_ALLOWED_ORIGINS": '["*"]',
        "CENTRIFUGO_CHANNEL_NAMESPACES": '[{"name":"chat","presence":true}]',
    }, {}).config
    assert cfg.client.token.hmac_secret_key == "from-env"
    assert cfg.http_api.key == "api"
    assert cfg.http_server.port == 9100
    assert cfg.client.insecure is True
    assert cfg.prometheus.enabled is True
    assert cfg.health.enabled is False
    assert cfg.client.ping_interval == 40.0
    assert cfg.client.allowed_origins == ("*",)
    assert [(ns.name, ns.presence) for ns in cfg.channel.namespaces] == [("chat", True)]


def test_env_fugato_wins_over_centrifugo() -> None:
    env = {"CENTRIFUGO_HTTP_API_KEY": "c", "FUGATO_HTTP_API_KEY": "f"}
    assert load(None, env, {}).config.http_api.key == "f"


def test_env_overrides_file(tmp_path: Path) -> None:
    cfg = load_dict(tmp_path, {"http_server": {"port": 8001}, "http_api": {"key": "file"}},
                    env={"CENTRIFUGO_HTTP_SERVER_PORT": "8002"}).config
    assert cfg.http_server.port == 8002
    assert cfg.http_api.key == "file"


def test_env_unrelated_and_unknown_ignored() -> None:
    result = load(None, {"CENTRIFUGO_SOMETHING_ELSE": "1", "FUGATO_": "x", "PATH": "/bin", "HOME": "/root"}, {})
    assert result.config == Config()
    assert result.warnings == ()


def test_env_space_separated_origins() -> None:
    cfg = load(None, {"CENTRIFUGO_CLIENT_ALLOWED_ORIGINS": "http://a http://b"}, {}).config
    assert cfg.client.allowed_origins == ("http://a", "http://b")


def test_env_namespace_option(tmp_path: Path) -> None:
    cfg = load_dict(tmp_path, {"channel": {"namespaces": [{"name": "chat"}, {"name": "my_ns"}]}}, env={
        "CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_PRESENCE": "true",
        "CENTRIFUGO_CHANNEL_NAMESPACES_MY_NS_ALLOW_PUBLISH_FOR_CLIENT": "true",
        "CENTRIFUGO_CHANNEL_NAMESPACES_OTHER_PRESENCE": "true",  # no such namespace: ignored
    }).config
    chat, my_ns = cfg.channel.namespaces
    assert chat.presence is True
    assert my_ns.allow_publish_for_client is True


@pytest.mark.parametrize(("env", "message"), [
    ({"CENTRIFUGO_CLIENT_CHANNEL_LIMIT": "abc"}, "client.channel_limit"),
    ({"FUGATO_CLIENT_INSECURE": "perhaps"}, "client.insecure"),
    ({"CENTRIFUGO_CHANNEL_NAMESPACES": "[{"}, "CENTRIFUGO_CHANNEL_NAMESPACES"),
    ({"CENTRIFUGO_CLIENT_PING_INTERVAL": "fast"}, "client.ping_interval"),
])
def test_env_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, env, {})


# --- overrides ---------------------------------------------------------------------------------------------

def test_overrides_win_over_env_and_file(tmp_path: Path) -> None:
    cfg = load_dict(tmp_path, {"http_server": {"port": 8001}, "log": {"level": "warn"}},
                    env={"FUGATO_HTTP_SERVER_PORT": "8002"},
                    overrides={"http_server.port": 9000, "log.level": "error", "prometheus.enabled": "true"}).config
    assert cfg.http_server.port == 9000
    assert cfg.log.level == "error"
    assert cfg.prometheus.enabled is True


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key: http_server\.nope"):
        load(None, {}, {"http_server.nope": 1})


# --- export ------------------------------------------------------------------------------------------------

def test_to_json_dict_renders_go_durations_and_round_trips(tmp_path: Path) -> None:
    cfg = load(str(REPO / "conf" / "config.example.json"), {}, {}).config
    data = to_json_dict(cfg)
    assert data["client"]["ping_interval"] == "25s"
    assert data["channel"]["history_meta_ttl"] == "720h0m0s"
    assert data["websocket"]["write_timeout"] == "1s"
    assert data["channel"]["namespaces"][0]["name"] == "chat"
    assert next(iter(data["channel"]["namespaces"][0])) == "name"
    again = load_dict(tmp_path, json.loads(json.dumps(data)))
    assert again.config == cfg
    assert again.warnings == ()
    assert to_json_dict(Config())["shutdown"] == {"timeout": "30s"}


def test_known_keys() -> None:
    keys = known_keys()
    assert keys["http_server.port"] is int
    assert "client.token.hmac_secret_key" in keys
    assert "channel.namespaces" in keys
    assert "channel.without_namespace.presence" in keys


# --- shipped configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["config.dev.json", "config.example.json"])
def test_shipped_configs_load_cleanly(name: str) -> None:
    result = load(str(REPO / "conf" / name), {}, {})
    assert result.warnings == ()
    assert result.config.client.token.hmac_secret_key


def test_dev_config_contents() -> None:
    cfg = load(str(REPO / "conf" / "config.dev.json"), {}, {}).config
    assert cfg.client.token.hmac_secret_key == "fugato-dev-secret-change-me-in-production"
    assert cfg.http_api.key == "dev-api-key"
    assert cfg.client.allowed_origins == ("*",)
    assert cfg.client.allow_anonymous_connect_without_token is False
    wn = cfg.channel.without_namespace
    assert wn.allow_subscribe_for_client and wn.allow_publish_for_client and wn.presence and wn.join_leave
    assert wn.allow_presence_for_subscriber and wn.allow_history_for_subscriber and wn.force_recovery
    assert (wn.history_size, wn.history_ttl) == (100, 300.0)
    namespaces = {ns.name: ns for ns in cfg.channel.namespaces}
    assert namespaces["chat"].allow_publish_for_client
    assert namespaces["news"].allow_subscribe_for_client
    assert not namespaces["news"].allow_publish_for_client


def test_a_single_string_is_accepted_for_a_list_of_strings(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"client": {"allowed_origins": "*"}, "engine": {"redis": {"address": "redis://h:1"}}}))
    cfg = load(str(path), {}, {}).config
    assert cfg.client.allowed_origins == ("*",)
    assert cfg.engine.redis.address == ("redis://h:1",)


def test_connect_code_transforms_load_and_refuse_non_disconnect_codes(tmp_path: Path) -> None:
    good = {"client": {"connect_code_to_unidirectional_disconnect": {
        "enabled": True, "transforms": [{"code": 109, "to": {"code": 4109, "reason": "refresh"}}]}}}
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good))
    cfg = load(str(path), {}, {}).config.client.connect_code_to_unidirectional_disconnect
    assert cfg.enabled and [(t.code, t.to.code, t.to.reason) for t in cfg.transforms] == [(109, 4109, "refresh")]
    bad = {"client": {"connect_code_to_unidirectional_disconnect": {
        "enabled": True, "transforms": [{"code": 109, "to": {"code": 200, "reason": "ok"}}]}}}
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="3000-4999"):
        load(str(path), {}, {})


def test_connect_code_to_http_response_refuses_a_non_http_status(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"uni_sse": {"connect_code_to_http_response": {
        "enabled": True, "transforms": [{"code": 3500, "to": {"status_code": 0, "body": ""}}]}}}))
    with pytest.raises(ConfigError, match="not an HTTP status"):
        load(str(path), {}, {})
