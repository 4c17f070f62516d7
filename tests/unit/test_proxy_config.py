"""Proxy configuration in Centrifugo v6's layout, the committed GRPC code against proxy.proto, and how the HTTP
proxy reads a backend's answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.config_load import load
from node.errors import ConfigError, DisconnectError, ReplyError
from node.metrics import Metrics
from node.proxy.http import answer
from node.proxy.manager import Proxies
from node.proxy.proto import generate
from node.proxy.types import ProxyCallError

# The shape of centrifugal.dev's v6 proxy examples: every key of a proxy, named proxies, namespace switches.
CENTRIFUGO_CONFIG = {
    "client": {
        "proxy": {
            "connect": {"enabled": True, "endpoint": "http://localhost:3000/centrifugo/connect", "timeout": "1s",
                        "http_headers": ["Cookie", "Authorization"], "emulated_headers": ["X-Token"]},
            "refresh": {"enabled": True, "endpoint": "grpc://localhost:12000", "timeout": "2s",
                        "grpc_metadata": ["authorization"], "include_connection_meta": True,
                        "grpc": {"tls": {"enabled": False}, "credentials_key": "token", "credentials_value": "x",
                                 "compression": True, "static_metadata": {"x-env": "prod"}}},
        }
    },
    "channel": {
        "proxy": {
            "subscribe": {"endpoint": "http://localhost:3000/centrifugo/subscribe", "binary_encoding": True,
                          "http": {"static_headers": {"X-Static": "1"},
                                   "status_to_code_transforms": [
                                       {"status_code": 404, "to_error": {"code": 404, "message": "not found"}}],
                                   "tls": {"enabled": False, "insecure_skip_verify": True}}},
            "publish": {"endpoint": "http://localhost:3000/centrifugo/publish"},
            "sub_refresh": {"endpoint": "http://localhost:3000/centrifugo/sub_refresh"},
        },
        "namespaces": [
            {"name": "sub", "subscribe_proxy_enabled": True},
            {"name": "named", "subscribe_proxy_enabled": True, "subscribe_proxy_name": "other",
             "publish_proxy_enabled": True, "publish_proxy_name": "other", "sub_refresh_proxy_enabled": True},
        ],
    },
    "rpc": {
        "proxy": {"endpoint": "http://localhost:3000/centrifugo/rpc", "timeout": "500ms"},
        "without_namespace": {"proxy_enabled": True},
        "namespaces": [{"name": "ns", "proxy_enabled": True, "proxy_name": "other"}],
        "namespace_boundary": ":",
    },
    "proxies": [{"name": "other", "endpoint": "grpc://localhost:12001", "timeout": "3s"}],
}


def test_a_centrifugo_proxy_config_loads_without_warnings(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CENTRIFUGO_CONFIG))
    result = load(str(path), {}, {})
    assert result.warnings == ()
    cfg = result.config
    assert cfg.client.proxy.connect.http_headers == ("Cookie", "Authorization")
    assert cfg.client.proxy.refresh.grpc.static_metadata == {"x-env": "prod"}
    assert cfg.channel.proxy.subscribe.http.status_to_code_transforms[0].to_error.code == 404
    assert cfg.rpc.proxy.timeout == 0.5 and cfg.proxies[0].timeout == 3.0
    assert cfg.channel.namespaces[1].subscribe_proxy_name == "other"
    proxies = Proxies(cfg, Metrics("test").registry)
    assert proxies.connect is not None and proxies.connect.backend.kind == "http"
    assert proxies.refresh is not None and proxies.refresh.backend.kind == "grpc"
    named = proxies.for_channel("publish", cfg.channel.namespaces[1])
    assert named is not None and named.name == "other"
    # One backend per endpoint: the hooks naming "other" share its connection.
    assert proxies.for_channel("subscribe", cfg.channel.namespaces[1]) is named
    assert proxies.for_rpc("ns:x") is named and proxies.for_rpc("plain") is not named
    assert proxies.pick_headers({"Cookie": "a", "Host": "b"}) == {"cookie": "a"}


def test_environment_sets_static_headers_as_json() -> None:
    cfg = load(None, {"CENTRIFUGO_CHANNEL_PROXY_SUBSCRIBE_HTTP_STATIC_HEADERS": '{"X-A": "1"}'}, {}).config
    assert cfg.channel.proxy.subscribe.http.static_headers == {"X-A": "1"}


def test_bad_proxy_configs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        load(None, {}, {"client.proxy.connect.enabled": True})
    with pytest.raises(ConfigError, match='namespace x1: publish proxy with name "missing" not found'):
        load(None, {}, {"channel.namespaces": [{"name": "x1", "publish_proxy_enabled": True,
                                                 "publish_proxy_name": "missing"}]})
    # The default proxy named by an enabled hook must have an endpoint (checked when the node starts).
    cfg = load(None, {}, {"channel.namespaces": [{"name": "x1", "publish_proxy_enabled": True}]}).config
    with pytest.raises(ConfigError, match="not configured"):
        Proxies(cfg, Metrics("test").registry)
    with pytest.raises(ConfigError, match="scheme"):
        load(None, {}, {"rpc.proxy.endpoint": "ftp://x"})


def test_backend_answers() -> None:
    assert answer(b'{"result":{"user":"1"}}') == {"user": "1"}
    assert answer(b"{}") is None
    with pytest.raises(ReplyError) as refused:
        answer(b'{"error":{"code":1000,"message":"custom"}}')
    assert refused.value.error.code == 1000
    with pytest.raises(DisconnectError) as closed:
        answer(b'{"disconnect":{"code":4500,"reason":"bye"}}')
    assert closed.value.disconnect.code == 4500
    for garbage in (b"<html>", b"[1]", b'{"result":5}', b'{"error":"x"}'):
        with pytest.raises(ProxyCallError) as failed:
            answer(garbage)
        assert failed.value.outcome == "bad_response"


def test_generated_grpc_code_matches_proxy_proto(tmp_path: Path) -> None:
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTO_DIR / fresh.name
        assert fresh.read_text() == committed.read_text(), f"{committed.name} is stale: run the generator"


def test_the_example_proxy_config_loads_and_resolves() -> None:
    path = Path(__file__).resolve().parents[2] / "conf" / "config.proxies.json"
    result = load(str(path), {}, {})
    assert result.warnings == ()
    proxies = Proxies(result.config, Metrics("test").registry)
    billing = result.config.channel.namespaces[1]
    proxy = proxies.for_channel("subscribe", billing)
    assert proxy is not None and proxy.backend.kind == "grpc" and proxies.for_rpc("billing:pay") is proxy
    prices = result.config.channel.namespaces[2]
    assert proxies.for_channel("subscribe_stream", prices) is proxy and prices.subscribe_stream_proxy_bidirectional
    assert proxies.connect is not None and proxies.connect.emulated == {"authorization"}
    assert result.config.fugato.leave_events.enabled
