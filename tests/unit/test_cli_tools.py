"""Centrifugo's helper commands: ``checktoken``, ``checksubtoken``, ``defaultconfig``, ``defaultenv`` and
``configdoc``, run as ``python -m node`` (their output formats are Centrifugo's)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
from harness import free_port
from test_cli import REPO, SECRET, SUB_SECRET, run, write_config

from node.config import Config
from node.config_load import known_keys, load, to_json_dict


def config_file(tmp_path: Path, **client: object) -> Path:
    return write_config(tmp_path / "config.json", {"client": {"token": {"hmac_secret_key": SECRET}, **client}})


def test_checktoken(tmp_path: Path) -> None:
    config_file(tmp_path)
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    proc = run(tmp_path, "checktoken", token)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "valid token for user alice"
    assert second.startswith("payload: ") and json.loads(second[9:])["sub"] == "alice"

    anonymous = jwt.encode({"sub": ""}, SECRET, algorithm="HS256")
    assert run(tmp_path, "checktoken", anonymous).stdout.splitlines()[0] == "valid token for anonymous user"

    forged = jwt.encode({"sub": "mallory"}, "another-secret-0123456789-abcdefghijk", algorithm="HS256")
    proc = run(tmp_path, "checktoken", forged)
    assert proc.returncode == 1
    assert re.match(r'error: token with algorithm HS256 and claims \{"sub":\s*"mallory"\} has error: ', proc.stdout)

    proc = run(tmp_path, "checktoken")
    assert proc.returncode == 1 and proc.stdout == "error: provide token to check [fugato checktoken <TOKEN>]\n"


def test_checksubtoken_uses_the_subscription_key_when_enabled(tmp_path: Path) -> None:
    config_file(tmp_path, subscription_token={"enabled": True, "hmac_secret_key": SUB_SECRET})
    token = jwt.encode({"sub": "bob", "channel": "$room"}, SUB_SECRET, algorithm="HS256")
    proc = run(tmp_path, "checksubtoken", token)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == 'valid subscription token for user "bob" and channel "$room"'
    wrong_key = jwt.encode({"sub": "bob", "channel": "$room"}, SECRET, algorithm="HS256")
    assert run(tmp_path, "checksubtoken", wrong_key).returncode == 1


def test_defaultconfig_is_the_whole_schema_with_defaults(tmp_path: Path) -> None:
    proc = run(tmp_path, "defaultconfig", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == to_json_dict(Config())
    assert run(tmp_path, "defaultconfig").returncode == 0
    written = tmp_path / "config.json"
    assert load(str(written), {}, {}).config == Config()  # it loads back, without warnings about unknown keys
    assert load(str(written), {}, {}).warnings == ()
    proc = run(tmp_path, "defaultconfig")
    assert proc.returncode == 1 and proc.stdout == "error: target file already exists\n"
    # A base file: its values, and the defaults of everything else.
    base = write_config(tmp_path / "base.json", {"http_server": {"port": 9001}})
    data = json.loads(run(tmp_path, "defaultconfig", "-d", "-b", str(base)).stdout)
    assert data["http_server"]["port"] == 9001 and data["client"]["ping_interval"] == "25s"


def test_defaultenv_lists_every_key_of_the_schema(tmp_path: Path) -> None:
    proc = run(tmp_path, "defaultenv")
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    expected = {"CENTRIFUGO_" + key.upper().replace(".", "_") for key in known_keys()}
    assert set(env) == expected
    assert env["CENTRIFUGO_CLIENT_PING_INTERVAL"] == "25s"
    assert env["CENTRIFUGO_HTTP_SERVER_PORT"] == "8000"
    assert env["CENTRIFUGO_HTTP_API_HANDLER_PREFIX"] == '"/api"'
    assert env["CENTRIFUGO_CLIENT_ALLOWED_ORIGINS"] == '""'
    assert env["CENTRIFUGO_CLIENT_INSECURE"] == "false"
    base = write_config(tmp_path / "base.json", {"client": {"allowed_origins": ["https://a", "https://b"]},
                                                 "channel": {"namespaces": [{"name": "chat"}, {"name": "feed"}]}})
    proc = run(tmp_path, "defaultenv", "-b", str(base), "--base-non-zero-only")
    assert proc.stdout.splitlines() == [
        'CENTRIFUGO_CHANNEL_NAMESPACES="chat feed"',
        'CENTRIFUGO_CLIENT_ALLOWED_ORIGINS="https://a" "https://b"',
    ]


def test_configdoc_documents_every_key(tmp_path: Path) -> None:
    proc = run(tmp_path, "configdoc", "--markdown")
    assert proc.returncode == 0, proc.stderr
    headings = set(re.findall(r"^#+ `([^`]+)`$", proc.stdout, re.M))
    assert set(known_keys()) <= headings  # every settable key, from the schema itself
    assert "client.subscribe_to_user_personal_channel" in headings  # and every section
    entry = proc.stdout.split("## `client.ping_interval`\n\n", 1)[1].split("\n\n#", 1)[0]
    assert entry.startswith("Type: `duration`. Default: `25s`\n\nEnv: `CENTRIFUGO_CLIENT_PING_INTERVAL`")
    # Descriptions come from the schema's comments: write_delay has one in node/config.py.
    write_delay = proc.stdout.split("## `client.write_delay`", 1)[1].split("\n\n#", 1)[0]
    assert "batching" in write_delay
    section = run(tmp_path, "configdoc", "-m", "-s", "websocket", "-l", "1").stdout
    assert section.startswith("## `websocket`") and "`client." not in section


def test_configdoc_serves_html(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "node", "configdoc", "-p", str(port)], cwd=tmp_path,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the server listens
        assert f"localhost:{port}" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "<code>client.ping_interval</code>" in page
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # also closes its output pipe
