"""The ``fugato`` command line, run as ``python -m node`` in a scratch directory (``serve`` is tested elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

import node
from node.cli import _key_flags
from node.config_load import load
from node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
# PyJWT warns about HMAC keys shorter than 32 bytes, and pytest turns warnings into errors.
SECRET = "test-secret-0123456789-abcdefghijklmnop"
SUB_SECRET = "subscription-secret-0123456789-abcdefgh"


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CENTRIFUGO_", "FUGATO_"))}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=cwd, env=base, capture_output=True,
                          text=True, timeout=60, check=False)


def write_config(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_version(tmp_path: Path) -> None:
    proc = run(tmp_path, "version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"Fugato v{node.__version__} (Centrifugo protocol v2 compatible)"


def test_genconfig_writes_loadable_file_with_random_secrets(tmp_path: Path) -> None:
    proc = run(tmp_path, "genconfig")
    assert proc.returncode == 0, proc.stderr
    assert "config.json" in proc.stdout
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["client"]["allowed_origins"] == []
    result = load(str(tmp_path / "config.json"), {}, {})
    assert result.warnings == ()
    first = (result.config.client.token.hmac_secret_key, result.config.http_api.key)
    assert all(len(s) >= 16 for s in first)

    proc = run(tmp_path, "genconfig", "-c", "other.json")
    assert proc.returncode == 0, proc.stderr
    second = load(str(tmp_path / "other.json"), {}, {}).config
    assert second.client.token.hmac_secret_key != first[0]
    assert second.http_api.key != first[1]


def test_genconfig_refuses_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    target.write_text("{}", encoding="utf-8")
    proc = run(tmp_path, "genconfig")
    assert proc.returncode == 1
    assert "already exists" in proc.stderr
    assert target.read_text() == "{}"

    proc = run(tmp_path, "genconfig", "--force")
    assert proc.returncode == 0, proc.stderr
    assert load(str(target), {}, {}).config.client.token.hmac_secret_key


def test_genconfig_toml(tmp_path: Path) -> None:
    proc = run(tmp_path, "genconfig", "-c", "config.toml")
    assert proc.returncode == 0, proc.stderr
    result = load(str(tmp_path / "config.toml"), {}, {})
    assert result.warnings == ()
    assert result.config.client.token.hmac_secret_key
    assert result.config.http_api.key


def test_checkconfig_valid(tmp_path: Path) -> None:
    write_config(tmp_path / "config.json", {"client": {"token": {"hmac_secret_key": "x"}}})
    proc = run(tmp_path, "checkconfig")
    assert proc.returncode == 0, proc.stderr
    assert "config is valid" in proc.stdout
    assert proc.stderr == ""


def test_checkconfig_prints_warnings(tmp_path: Path) -> None:
    write_config(tmp_path / "my.json", {"client": {"foo_bar": 1}})
    proc = run(tmp_path, "checkconfig", "-c", "my.json")
    assert proc.returncode == 0
    assert "WARNING: unknown config key: client.foo_bar" in proc.stderr


@pytest.mark.parametrize(("data", "message"), [
    ({"client": {"channel_limit": "abc"}}, "client.channel_limit: expected integer"),
    ({"channel": {"without_namespace": {"history_size": 5}}}, "history_size and history_ttl"),
    # A namespace or RPC namespace naming a proxy that is not configured (Centrifugo's wording).
    ({"channel": {"namespaces": [{"name": "chat", "subscribe_proxy_enabled": True, "subscribe_proxy_name": "auth"}]}},
     'namespace chat: subscribe proxy with name "auth" not found'),
    ({"channel": {"without_namespace": {"subscribe_stream_proxy_name": "feeds"}}},
     'in channel.without_namespace: subscribe stream proxy with name "feeds" not found'),
    ({"rpc": {"namespaces": [{"name": "billing", "proxy_enabled": True, "proxy_name": "billing"}]}},
     "rpc namespace billing: proxy billing not found for rpc"),
    ({"channel": {"namespaces": [{"name": "kv", "map": {"remove_proxy_name": "writes"}}]}},
     'namespace kv: map remove proxy with name "writes" not found'),
    ({"proxies": [{"name": "default", "endpoint": "grpc://localhost:1"}]}, "proxy name default is reserved"),
    ({"channel": {"namespaces": [{"name": "feed", "subscribe_stream_proxy_enabled": True,
                                  "publish_proxy_enabled": True}]}},
     "namespace feed: can't use subscribe stream proxy together with subscribe, publish or sub refresh proxies"),
])
def test_checkconfig_invalid(tmp_path: Path, data: object, message: str) -> None:
    write_config(tmp_path / "config.json", data)
    proc = run(tmp_path, "checkconfig")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert message in proc.stderr


def test_checkconfig_missing_file(tmp_path: Path) -> None:
    proc = run(tmp_path, "checkconfig")
    assert proc.returncode == 1
    assert "not found" in proc.stderr


def test_checkconfig_sees_env(tmp_path: Path) -> None:
    write_config(tmp_path / "config.json", {})
    proc = run(tmp_path, "checkconfig", env={"CENTRIFUGO_CLIENT_CHANNEL_LIMIT": "nope"})
    assert proc.returncode == 1
    assert "client.channel_limit" in proc.stderr


def _token_from(stdout: str) -> str:
    lines = stdout.strip().splitlines()
    assert len(lines) == 2
    return lines[1]


def test_gentoken(tmp_path: Path) -> None:
    write_config(tmp_path / "config.json", {"client": {"token": {"hmac_secret_key": SECRET}}})
    proc = run(tmp_path, "gentoken", "-u", "42", "-i", '{"name": "Ann"}')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('HMAC SHA-256 JWT for user "42" with expiration TTL 168h0m0s:\n')
    claims = jwt.decode(_token_from(proc.stdout), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42"
    assert claims["info"] == {"name": "Ann"}
    assert abs(claims["exp"] - (time.time() + 604800)) < 60
    assert claims["exp"] - claims["iat"] == 604800


def test_gentoken_ttl_and_no_exp(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.json", {"client": {"token": {"hmac_secret_key": SECRET}}})
    proc = run(tmp_path, "gentoken", "-c", str(cfg), "-u", "u1", "--ttl", "90")
    assert proc.returncode == 0, proc.stderr
    assert "TTL 1m30s:" in proc.stdout
    claims = jwt.decode(_token_from(proc.stdout), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 90

    proc = run(tmp_path, "gentoken", "-c", str(cfg), "-u", "u1", "--ttl", "0")
    assert proc.returncode == 0, proc.stderr
    claims = jwt.decode(_token_from(proc.stdout), SECRET, algorithms=["HS256"])
    assert "exp" not in claims
    assert claims["sub"] == "u1"


def test_gentoken_secret_from_env(tmp_path: Path) -> None:
    proc = run(tmp_path, "gentoken", "-u", "7", env={"FUGATO_CLIENT_TOKEN_HMAC_SECRET_KEY": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert jwt.decode(_token_from(proc.stdout), SECRET, algorithms=["HS256"])["sub"] == "7"


def test_gentoken_without_secret_fails(tmp_path: Path) -> None:
    proc = run(tmp_path, "gentoken", "-u", "42")
    assert proc.returncode == 1
    assert "hmac_secret_key" in proc.stderr


def test_gentoken_bad_info(tmp_path: Path) -> None:
    write_config(tmp_path / "config.json", {"client": {"token": {"hmac_secret_key": SECRET}}})
    proc = run(tmp_path, "gentoken", "-u", "42", "-i", "[1]")
    assert proc.returncode == 1
    assert "--info" in proc.stderr


def test_gensubtoken(tmp_path: Path) -> None:
    write_config(tmp_path / "config.json", {"client": {"token": {"hmac_secret_key": SECRET}}})
    proc = run(tmp_path, "gensubtoken", "-u", "42", "-s", "chat:room", "--ttl", "3600")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('HMAC SHA-256 JWT for user "42" and channel "chat:room" with expiration TTL 1h0m0s:')
    claims = jwt.decode(_token_from(proc.stdout), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["channel"]) == ("42", "chat:room")
    assert claims["exp"] - claims["iat"] == 3600


def test_gensubtoken_uses_subscription_secret_when_enabled(tmp_path: Path) -> None:
    write_config(tmp_path / "config.json", {"client": {
        "token": {"hmac_secret_key": SECRET},
        "subscription_token": {"enabled": True, "hmac_secret_key": SUB_SECRET},
    }})
    proc = run(tmp_path, "gensubtoken", "-u", "1", "-s", "news")
    assert proc.returncode == 0, proc.stderr
    assert jwt.decode(_token_from(proc.stdout), SUB_SECRET, algorithms=["HS256"])["channel"] == "news"


def test_key_flags_parse_dotted_options() -> None:
    assert _key_flags(["--http_server.port", "9000", "--prometheus.enabled", "--log.level=debug"]) == {
        "http_server.port": "9000", "prometheus.enabled": "true", "log.level": "debug",
    }
    with pytest.raises(ConfigError, match="unknown flag"):
        _key_flags(["--nope.key=1"])
    # The string values go through the loader's conversion like env values do.
    cfg = load(None, {}, _key_flags(["--http_server.port=9001", "--client.insecure"])).config
    assert cfg.http_server.port == 9001
    assert cfg.client.insecure is True


def test_gentoken_short_secret_warns_cleanly(tmp_path: Path) -> None:
    write_config(tmp_path / "config.json", {"client": {"token": {"hmac_secret_key": "short"}}})
    proc = run(tmp_path, "gentoken", "-u", "42")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("WARNING: ")
    assert "Traceback" not in proc.stderr
    assert _token_from(proc.stdout).count(".") == 2
