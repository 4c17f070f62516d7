"""The ``fugato`` command line: ``serve``, ``genconfig``, ``checkconfig``, ``gentoken``, ``gensubtoken``, ``version``,
and Centrifugo's ``checktoken``, ``checksubtoken``, ``defaultconfig``, ``defaultenv``, ``configdoc`` (``clitools``).

Flags follow Centrifugo's where they exist (``-c/--config``, ``-p/--port``, ``-a/--address``, ``-u/--user``), and
``fugato`` without a sub-command runs the server, as ``centrifugo`` does. ``serve`` also takes any config key as a
``--section.key=value`` flag (``--http_server.port 9000``, ``--prometheus.enabled``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import Any, Final

import node
from node import clitools
from node.config import Config, spans_processes
from node.config_load import LoadResult, format_duration, known_keys, load
from node.errors import ConfigError
from node.workers import plan as plan_workers
from node.workers import run as supervise

DEFAULT_CONFIG: Final = "config.json"
DEFAULT_TOKEN_TTL: Final = 7 * 24 * 3600  # one week, like Centrifugo's gentoken

_LOG_LEVELS: Final[dict[str, int]] = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
_SUBCOMMANDS: Final = ("serve", "genconfig", "checkconfig", "gentoken", "gensubtoken", "checktoken", "checksubtoken",
                       "defaultconfig", "defaultenv", "configdoc", "version")


def version_text() -> str:
    return f"Fugato v{node.__version__} (Centrifugo protocol v2 compatible)"


def _err(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _load(path: str | None, overrides: dict[str, Any] | None = None) -> LoadResult:
    result = load(path, os.environ, overrides or {})
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    return result


def _config_path(explicit: str | None, *, required: bool) -> str | None:
    """The file to read: the one given, else ``config.json`` in the working directory if present."""
    if explicit is not None:
        return explicit
    if os.path.exists(DEFAULT_CONFIG) or required:
        return DEFAULT_CONFIG
    return None


def _key_flags(extra: Sequence[str]) -> dict[str, Any]:
    """``--section.key=value`` / ``--section.key value`` / bare ``--bool.key`` flags as load() overrides."""
    keys = known_keys()
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        i += 1
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}")
        name, eq, value = arg[2:].partition("=")
        if name not in keys:
            raise ConfigError(f"unknown flag {arg.split('=')[0]!r}")
        if not eq:
            if keys[name] is bool:
                value = "true"
            elif i < len(extra):
                value = extra[i]
                i += 1
            else:
                raise ConfigError(f"flag --{name} needs a value")
        overrides[name] = value
    return overrides


def configure_logging(config: Config) -> None:
    level_name = config.log.level
    if level_name == "none":
        logging.disable(logging.CRITICAL)
        return
    logging.disable(logging.NOTSET)
    handler: logging.Handler = (
        logging.FileHandler(config.log.file, encoding="utf-8") if config.log.file else logging.StreamHandler()
    )
    logging.basicConfig(
        level=_LOG_LEVELS.get(level_name, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
        force=True,
    )


# --- commands ----------------------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace, extra: Sequence[str]) -> int:
    overrides = _key_flags(extra)
    if args.port is not None:
        overrides["http_server.port"] = args.port
    if args.address is not None:
        overrides["http_server.address"] = args.address
    if args.log_level is not None:
        overrides["log.level"] = args.log_level
    path = _config_path(args.config, required=False)
    result = _load(path, overrides)
    try:
        workers = plan_workers(args.workers, spans_processes=spans_processes(result.config))
    except ValueError as e:
        return _err(str(e))
    if workers > 1 and args.worker_index is None:
        serve_args = [*(["--config", os.path.abspath(path)] if path else []), *_passthrough(args, extra)]
        return supervise(workers, serve_args, result.config.shutdown.timeout + 5)
    if args.worker_index is not None:
        host = socket.gethostname()
        overrides.setdefault("node.name", result.config.node.name or f"{host}-{args.worker_index}")
        result = load(path, os.environ, overrides)
    configure_logging(result.config)
    from node.server import run_server  # noqa: PLC0415  # lazy: the other commands must not need aiohttp

    def reload() -> Config:
        return load(path, os.environ, overrides).config

    run_server(result.config, reuse_port=args.worker_index is not None, reload=reload)
    return 0


def _passthrough(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The serve flags every worker gets again (all but --workers)."""
    out = list(extra)
    if args.port is not None:
        out += ["--port", str(args.port)]
    if args.address is not None:
        out += ["--address", args.address]
    if args.log_level is not None:
        out += ["--log-level", args.log_level]
    return out


def _genconfig_text(path: str) -> str:
    hmac_secret = str(uuid.uuid4())
    api_key = secrets.token_urlsafe(32)
    if path.lower().endswith(".toml"):
        return (
            "[client]\n"
            "allowed_origins = []\n\n"
            "[client.token]\n"
            f"hmac_secret_key = {json.dumps(hmac_secret)}\n\n"
            "[http_api]\n"
            f"key = {json.dumps(api_key)}\n"
        )
    document = {
        "client": {"token": {"hmac_secret_key": hmac_secret}, "allowed_origins": []},
        "http_api": {"key": api_key},
    }
    return json.dumps(document, indent=2) + "\n"


def cmd_genconfig(args: argparse.Namespace) -> int:
    path: str = args.config
    if not path.lower().endswith((".json", ".toml")):
        return _err(f"unsupported config format for {path} (use .json or .toml)")
    if os.path.exists(path) and not args.force:
        return _err(f"{path} already exists; use --force to overwrite it")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(_genconfig_text(path))
    except OSError as e:
        return _err(f"cannot write {path}: {e.strerror or e}")
    print(f"config written to {path}")
    return 0


def cmd_checkconfig(args: argparse.Namespace) -> int:
    _load(_config_path(args.config, required=True))
    print("config is valid")
    return 0


def _ttl_text(ttl: int) -> str:
    return f"with expiration TTL {format_duration(ttl)}" if ttl > 0 else "without expiration"


def _claims(user: str, ttl: int) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now}
    if ttl > 0:
        claims["exp"] = now + ttl
    return claims


def _sign(claims: dict[str, Any], secret: str) -> str:
    """HS256-sign ``claims``; PyJWT's warnings (e.g. a key shorter than 32 bytes) become ``WARNING:`` lines."""
    import jwt  # noqa: PLC0415 - keep `fugato version` and friends light

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token = jwt.encode(claims, secret, algorithm="HS256")
    for w in caught:
        print(f"WARNING: {w.message}", file=sys.stderr)
    return token


def cmd_gentoken(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config, required=False)).config
    secret = config.client.token.hmac_secret_key
    if not secret:
        return _err("no HMAC secret configured: set client.token.hmac_secret_key")
    if args.ttl < 0:
        return _err("--ttl must not be negative")
    claims = _claims(args.user, args.ttl)
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except json.JSONDecodeError as e:
            return _err(f"--info: invalid JSON: {e.msg}")
        if not isinstance(info, dict):
            return _err("--info: expected a JSON object")
        claims["info"] = info
    token = _sign(claims, secret)
    print(f'HMAC SHA-256 JWT for user "{args.user}" {_ttl_text(args.ttl)}:\n{token}')
    return 0


def cmd_gensubtoken(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config, required=False)).config
    sub_token = config.client.subscription_token
    secret = sub_token.hmac_secret_key if sub_token.enabled else config.client.token.hmac_secret_key
    if not secret:
        where = "client.subscription_token" if sub_token.enabled else "client.token"
        return _err(f"no HMAC secret configured: set {where}.hmac_secret_key")
    if not args.channel:
        return _err("channel required (-s/--channel)")
    if args.ttl < 0:
        return _err("--ttl must not be negative")
    claims = _claims(args.user, args.ttl)
    claims["channel"] = args.channel
    token = _sign(claims, secret)
    print(f'HMAC SHA-256 JWT for user "{args.user}" and channel "{args.channel}" {_ttl_text(args.ttl)}:\n{token}')
    return 0


# --- parser ------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fugato", description="Fugato: a Centrifugo-compatible real-time server.")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server (the default command)",
                           epilog="Any config key can also be given as --section.key=value.")
    serve.add_argument("-c", "--config", help="config file (.json or .toml); default: ./config.json if present")
    serve.add_argument("-p", "--port", type=int, help="http_server.port")
    serve.add_argument("-a", "--address", "--host", dest="address", help="http_server.address")
    serve.add_argument("--log-level", "--log_level", dest="log_level", help="log.level")
    serve.add_argument("--workers", default="1",
                       help="worker processes on the same port: a number or 'auto' (CPUs, honouring a cgroup limit);"
                            " more than one runs them under supervisord and needs the Redis engine")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by supervisord for each worker

    gen = sub.add_parser("genconfig", help="write a minimal config with random secrets")
    gen.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="file to write (default: config.json)")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")

    check = sub.add_parser("checkconfig", help="validate a config file")
    check.add_argument("-c", "--config", help="config file (default: config.json)")

    for name, help_text in (("gentoken", "generate a connection JWT (HS256)"),
                            ("gensubtoken", "generate a subscription JWT (HS256)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-c", "--config", help="config file (default: ./config.json if present)")
        p.add_argument("-u", "--user", default="", help="user ID (sub claim)")
        p.add_argument("-t", "--ttl", type=int, default=DEFAULT_TOKEN_TTL,
                       help="token lifetime in seconds, 0 = no exp (default: one week)")
        if name == "gentoken":
            p.add_argument("-i", "--info", help="info claim as a JSON object")
        else:
            p.add_argument("-s", "--channel", default="", help="channel (channel claim)")

    clitools.add_parsers(sub, DEFAULT_CONFIG)
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0] not in _SUBCOMMANDS and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "serve")  # like `centrifugo --config config.json`
    parser = build_parser()
    args, extra = parser.parse_known_args(args_list)
    if extra and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "serve":
            return cmd_serve(args, extra)
        if args.command == "genconfig":
            return cmd_genconfig(args)
        if args.command == "checkconfig":
            return cmd_checkconfig(args)
        if args.command == "gentoken":
            return cmd_gentoken(args)
        if args.command == "gensubtoken":
            return cmd_gensubtoken(args)
        if args.command in ("checktoken", "checksubtoken"):
            return clitools.cmd_checktoken(args, _load(_config_path(args.config, required=False)).config)
        if args.command == "defaultconfig":
            return clitools.cmd_defaultconfig(args)
        if args.command == "defaultenv":
            return clitools.cmd_defaultenv(args)
        if args.command == "configdoc":
            return clitools.cmd_configdoc(args)
        if args.command == "version":
            print(version_text())
            return 0
    except ConfigError as e:
        return _err(str(e))
    parser.print_help()
    return 2
