"""Centrifugo's helper commands: ``checktoken``, ``checksubtoken``, ``defaultconfig``, ``defaultenv`` and
``configdoc``, with Centrifugo's flags and output formats.

The last three are generated from the one configuration schema, the dataclasses of ``node/config.py``: the
keys and types from ``config_load.known_keys`` and the dataclass fields, the defaults from a default
``Config``, and each key's description from the comments next to its field (a trailing ``# ...`` or the
comment lines right above it) or, for a section, its class docstring. A key added to the schema shows up in
all three without being listed anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import functools
import html
import inspect
import io
import json
import os
import sys
import tokenize
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from node.auth.jwt import JWTVerifier
from node.config import Config
from node.config_fields import config_key
from node.config_load import format_duration, known_keys, load, to_json_dict
from node.errors import TokenError

ENV_PREFIX: Final = "CENTRIFUGO_"
NO_DOC: Final = "No documentation available."
# Arrays of named objects: their variable lists the names (each object's keys have variables of their own).
NAMED_ARRAYS: Final = frozenset({"channel.namespaces", "rpc.namespaces", "proxies", "consumers"})


# --- tokens -----------------------------------------------------------------------------------------------


def _claims_text(token: str) -> tuple[str, str]:
    """The token's algorithm and its claims as sent (Centrifugo prints both when a token is refused)."""
    try:
        head, payload = token.split(".")[:2]
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        claims = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        json.loads(claims)
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenError(f"malformed token: {e}") from None
    return str(header.get("alg", "")) if isinstance(header, dict) else "", claims


async def _verify(config: Config, token: str, *, subscription: bool) -> tuple[str, str]:
    """(user, channel) of a valid token, else TokenError with Centrifugo's wording."""
    algorithm, claims = _claims_text(token)
    verifier = JWTVerifier(config.client.token, config.client.subscription_token)
    await verifier.start()
    try:
        if subscription:
            sub = await verifier.verify_subscribe_token(token)
            return sub.user, sub.channel
        return (await verifier.verify_connect_token(token)).user, ""
    except TokenError as e:
        raise TokenError(f"token with algorithm {algorithm} and claims {claims} has error: {e}") from None
    finally:
        await verifier.close()


def cmd_checktoken(args: argparse.Namespace, config: Config) -> int:
    subscription = args.command == "checksubtoken"
    if args.token is None:
        print(f"error: provide token to check [fugato {args.command} <TOKEN>]")
        return 1
    try:
        user, channel = asyncio.run(_verify(config, args.token, subscription=subscription))
    except TokenError as e:
        print(f"error: {e}")
        return 1
    claims = _claims_text(args.token)[1]
    if subscription:
        who = f'user "{user}"' if user else "anonymous user"
        print(f'valid subscription token for {who} and channel "{channel}"\npayload: {claims}')
    else:
        print(f"valid token for {'user ' + user if user else 'anonymous user'}\npayload: {claims}")
    return 0


# --- the schema, walked ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the schema: its dotted path (``[]`` marks the items of an array), type, default, docs."""

    path: str
    name: str
    level: int
    type: str
    complex: bool
    default: str
    doc: str
    children: tuple[Key, ...] = ()


def _type_name(tp: Any, duration: bool) -> tuple[str, bool]:
    """Centrifugo's display type and whether it is an object (or an array of objects)."""
    if duration:
        return "duration", False
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
    if item is not None:
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            return f"[]{item.__name__}", True
        return f"[]{_type_name(item, False)[0]}", False
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp.__name__, True
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(tp, str(tp)), False


@functools.cache
def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: a trailing ``# ...`` or the comment lines just above it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    names = {f.name for f in dataclasses.fields(cls)}
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(comments.get(number, ""))
            continue
        name = stripped.split(":", 1)[0].strip()
        if name in names and ":" in stripped:
            parts = pending + ([comments[number]] if number in comments else [])
            docs[name] = " ".join(p for p in parts if p)
        pending = []
    return docs


def _doc(cls: type, name: str, tp: Any) -> str:
    doc = _field_comments(cls).get(name, "")
    if not doc and isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp.__doc__ and \
            not tp.__doc__.startswith(tp.__name__ + "("):  # not the generated signature docstring
        doc = " ".join(tp.__doc__.split())
    doc = doc.replace("``", "`")  # reStructuredText literals as markdown code
    return doc or NO_DOC


def _default_text(value: Any, duration: bool) -> str:
    if duration:
        return format_duration(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ""
    if isinstance(value, tuple):
        return json.dumps([to_json_dict(v) if dataclasses.is_dataclass(v) else v for v in value])
    return json.dumps(value)


def schema(cls: type = Config, instance: Any = None, prefix: str = "", level: int = 1) -> list[Key]:
    """The documentation tree of ``cls`` (the whole config by default), defaults from ``instance`` (None: the
    fields' own defaults, for the items of an array, which may not be valid without values)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        duration = bool(f.metadata.get("duration"))
        key = config_key(cls, f)
        path = prefix + key
        type_name, complex_ = _type_name(tp, duration)
        value = getattr(instance, f.name) if instance is not None else _field_default(f)
        children: list[Key] = []
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            children = schema(tp, value if value is not None else tp(), path + ".", level + 1)
        elif isinstance(item, type) and dataclasses.is_dataclass(item):
            children = schema(item, None, path + "[].", level + 1)
        keys.append(Key(path, key, level, type_name, complex_, _default_text(value, duration),
                        _doc(cls, f.name, tp), tuple(children)))
    return keys


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _walk(keys: list[Key] | tuple[Key, ...]) -> Iterator[Key]:
    for key in keys:
        yield key
        yield from _walk(key.children)


# --- configdoc ------------------------------------------------------------------------------------------------


def env_name(path: str) -> str:
    return ENV_PREFIX + path.upper().replace(".", "_").replace("[]", "_<NAME>")


def _env_of(key: Key) -> str:
    if "[]" in key.path:
        prefix = key.path.split("[]", 1)[0]
        if prefix in NAMED_ARRAYS and not key.complex and not key.path.endswith(".name") and \
                key.path.count("[]") == 1:
            return env_name(key.path)
        return ""
    if not key.complex or key.path in NAMED_ARRAYS or key.type.startswith("[]"):
        return env_name(key.path)
    return ""


def markdown(keys: list[Key], section: str = "", base_level: int = 0) -> str:
    """Centrifugo's ``configdoc --markdown`` layout: a heading per key, its type and default, its variable."""
    out = []
    for key in _walk(keys):
        if section and not key.path.startswith(section):
            continue
        type_desc = f"Type: `{key.type}`" + (" object" if key.complex else "")
        if key.default:
            type_desc += f". Default: `{key.default}`"
        if env := _env_of(key):
            type_desc += f"\n\nEnv: `{env}`"
        heading = "#" * min(key.level + base_level, 6)
        out.append(f"{heading} `{key.path}`\n\n{type_desc}\n\n{key.doc}\n\n")
    return "".join(out)


def _html(md: str) -> bytes:
    """The markdown as a plain page (headings and paragraphs; code spans kept)."""
    parts = []
    for block in md.split("\n\n"):
        if not block.strip():
            continue
        text = _code_spans(html.escape(block))
        if block.startswith("#"):
            level = min(len(block) - len(block.lstrip("#")), 6)
            parts.append(f"<h{level}>{_code_spans(html.escape(block.lstrip('#').strip()))}</h{level}>")
        else:
            parts.append(f"<p>{text}</p>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Fugato configuration</title></head>"
            "<body>" + "\n".join(parts) + "</body></html>").encode()


def _code_spans(text: str) -> str:
    pieces = text.split("`")
    return "".join(p if i % 2 == 0 else f"<code>{p}</code>" for i, p in enumerate(pieces))


def cmd_configdoc(args: argparse.Namespace) -> int:
    md = markdown(schema(), args.section, args.base_level)
    if args.markdown:
        print(md)
        return 0
    page = _html(md)

    async def serve() -> None:
        from aiohttp import web  # noqa: PLC0415 - only this mode needs a server

        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=page, content_type="text/html", charset="utf-8")

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        print(f"configuration documentation on http://localhost:{args.port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


# --- defaultconfig, defaultenv --------------------------------------------------------------------------------


def cmd_defaultconfig(args: argparse.Namespace) -> int:
    if not args.dry_run and os.path.exists(args.config):
        print("error: target file already exists")
        return 1
    ext = os.path.splitext(args.config)[1].lstrip(".").lower()
    if ext != "json":
        print("error: output config file must have one of supported extensions: json")
        return 1
    config = load(args.base or None, {}, {}).config
    text = json.dumps(to_json_dict(config), indent=2)
    if args.dry_run:
        print(text)
        return 0
    with open(args.config, "x", encoding="utf-8") as fh:
        os.chmod(args.config, 0o600)
        fh.write(text + "\n")
    return 0


def _value_at(config: Any, path: str) -> tuple[Any, bool]:
    """The value of a dotted key and whether it is a duration."""
    obj, duration = config, False
    for part in path.split("."):
        field = next(f for f in dataclasses.fields(obj) if config_key(type(obj), f) == part)
        duration = bool(field.metadata.get("duration"))
        obj = getattr(obj, field.name)
    return obj, duration


def _env_value(path: str, value: Any, duration: bool) -> str:
    """Centrifugo's ``defaultenv`` spelling: strings quoted, lists space-separated, objects as escaped JSON."""
    if duration:
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        if path in NAMED_ARRAYS:
            return '"' + " ".join(getattr(v, "name", "") for v in value) + '"'
        if value and dataclasses.is_dataclass(value[0]):
            return '"' + json.dumps([to_json_dict(v) for v in value]).replace('"', '\\"') + '"'
        return " ".join(f'"{v}"' for v in value) if value else '""'
    return str(value)


def cmd_defaultenv(args: argparse.Namespace) -> int:
    config = load(args.base or None, {}, {}).config
    defaults = Config()
    lines = []
    for path in sorted(known_keys(), key=env_name):
        value, duration = _value_at(config, path)
        if args.base_non_zero_only and value == _value_at(defaults, path)[0]:
            continue
        lines.append(f"{env_name(path)}={_env_value(path, value, duration)}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def add_parsers(sub: Any, default_config: str) -> None:
    """The five commands' sub-parsers, with Centrifugo's flags."""
    for name, what in (("checktoken", "check a connection JWT"), ("checksubtoken", "check a subscription JWT")):
        p = sub.add_parser(name, help=what)
        p.add_argument("token", nargs="?", help="the JWT")
        p.add_argument("-c", "--config", help=f"config file (default: ./{default_config} if present)")
    p = sub.add_parser("defaultconfig", help="generate a full configuration file with defaults")
    p.add_argument("-c", "--config", default=default_config, help="file to generate (default: config.json)")
    p.add_argument("-b", "--base", default="", help="base config file to start from")
    p.add_argument("-d", "--dry-run", action="store_true", help="print the config instead of writing the file")
    p = sub.add_parser("defaultenv", help="list every environment variable with its default")
    p.add_argument("-b", "--base", default="", help="base config file to start from")
    p.add_argument("--base-non-zero-only", action="store_true",
                   help="only the variables whose value the base config file changes")
    p = sub.add_parser("configdoc", help="show the configuration documentation generated from the schema")
    p.add_argument("-m", "--markdown", action="store_true", help="print markdown to stdout")
    p.add_argument("-s", "--section", default="", help="only keys under this top-level section")
    p.add_argument("-p", "--port", type=int, default=6060, help="port to serve the documentation on")
    p.add_argument("-l", "--base-level", type=int, default=0, help="added to every heading level")
