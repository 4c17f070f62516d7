"""Loading the configuration: a file (JSON or TOML), then ``CENTRIFUGO_*``/``FUGATO_*`` environment variables,
then explicit overrides (CLI flags), converted by the dataclasses' field types into a validated ``Config``."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from node.config import Config, NamespaceConfig, broker_warnings
from node.config_fields import config_key
from node.consumers.config import ConsumerConfig
from node.errors import ConfigError

ENV_PREFIXES: Final = ("CENTRIFUGO_", "FUGATO_")  # applied in this order, so FUGATO_ wins

_NS_PER_UNIT: Final[dict[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go writes it
    "\u03bcs": 1_000,  # greek small letter mu, also accepted by Go
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART_RE: Final = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")

# Top-level sections Centrifugo has but Fugato does not implement: they are ignored with a warning.
_CENTRIFUGO_ONLY_SECTIONS: Final = frozenset({
    "webtransport", "swagger", "debug",
    "opentelemetry", "graphite", "usage_stats", "pid_file", "enable_unreleased_features",
    "connect_proxy",
})
# The most common Centrifugo v5 flat keys, so a v5 file gets a useful hint instead of a bare warning.
_V5_KEYS: Final[dict[str, str]] = {
    "token_hmac_secret_key": "client.token.hmac_secret_key",
    "token_rsa_public_key": "client.token.rsa_public_key",
    "token_jwks_public_endpoint": "client.token.jwks_public_endpoint",
    "api_key": "http_api.key",
    "api_insecure": "http_api.insecure",
    "allowed_origins": "client.allowed_origins",
    "client_insecure": "client.insecure",
    "allow_anonymous_connect_without_token": "client.allow_anonymous_connect_without_token",
    "port": "http_server.port",
    "address": "http_server.address",
    "internal_port": "http_server.internal_port",
    "namespaces": "channel.namespaces",
    "log_level": "log.level",
    "presence": "channel.without_namespace.presence",
    "history_size": "channel.without_namespace.history_size",
    "history_ttl": "channel.without_namespace.history_ttl",
    "ping_interval": "client.ping_interval",
    "pong_timeout": "client.pong_timeout",
}


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A validated configuration plus the warnings (unknown keys, ignored sections) found while loading it."""

    config: Config
    warnings: tuple[str, ...] = ()


def parse_duration(value: object) -> float:
    """Seconds from a Go duration string (``"1m30s"``, ``"720h"``, ``"-1.5s"``, ``"0"``) or integer nanoseconds."""
    if isinstance(value, bool):
        raise ConfigError(f"invalid duration {value!r}: expected a string like \"25s\" or integer nanoseconds")
    if isinstance(value, int):
        return value / 1e9
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"invalid duration {value!r}: a number means whole nanoseconds")
        return value / 1e9
    if not isinstance(value, str):
        raise ConfigError(f"invalid duration {value!r}: expected a string like \"25s\" or integer nanoseconds")
    text = value.strip()
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return 0.0
    if not body:
        raise ConfigError(f"invalid duration {value!r}: empty")
    total_ns = 0.0
    pos = 0
    while pos < len(body):
        m = _DURATION_PART_RE.match(body, pos)
        if m is None:
            rest = body[pos:]
            if re.fullmatch(r"\d+\.?\d*|\.\d+", rest):
                raise ConfigError(f"invalid duration {value!r}: missing unit (use e.g. \"{rest}s\")")
            raise ConfigError(f"invalid duration {value!r}: expected a Go duration such as \"25s\", \"1m30s\", "
                              "\"720h\" or \"1000ms\"")
        total_ns += float(m.group(1)) * _NS_PER_UNIT[m.group(2)]
        pos = m.end()
    seconds = round(total_ns) / 1e9
    return -seconds if text.startswith("-") else seconds


def format_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` for a number of seconds: ``"25s"``, ``"1m30s"``, ``"168h0m0s"``, ``"1.5ms"``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        if not rest:
            return str(whole)
        digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}"

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}\u00b5s"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    hours, ns = divmod(ns, 3600 * 1_000_000_000)
    minutes, ns = divmod(ns, 60 * 1_000_000_000)
    secs = frac(ns, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{sign}{minutes}m{secs}"
    return f"{sign}{secs}"


# --- type introspection ------------------------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _tuple_item(tp: Any) -> Any | None:
    """``X`` for ``tuple[X, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


@dataclass(frozen=True, slots=True)
class _Leaf:
    """One settable key: its Python type and whether it is a duration."""

    type: Any
    duration: bool


def _leaves(cls: type, prefix: str = "") -> dict[str, _Leaf]:
    out: dict[str, _Leaf] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{config_key(cls, f)}"
        if _is_dataclass_type(tp):
            out.update(_leaves(tp, path + "."))
        else:
            out[path] = _Leaf(tp, bool(f.metadata.get("duration")))
    return out


def known_keys() -> dict[str, Any]:
    """Every settable dotted key (``"http_server.port"``, ``"channel.namespaces"``, …) mapped to its Python type."""
    return {path: leaf.type for path, leaf in _leaves(Config).items()}


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return repr(value)


# --- conversion ----------------------------------------------------------------------------------------------------

_TRUE: Final = frozenset({"1", "t", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "f", "false", "no", "off"})


def _number(tp: type[int] | type[float], value: object) -> int | float | None:
    """``value`` as an int (a whole float too) or a float, from a number or a numeric string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, float) and (tp is float or value.is_integer())):
        return tp(value)
    if isinstance(value, str):
        try:
            return tp(value.strip())
        except ValueError:
            return None
    return None


def _convert(tp: Any, value: object, where: str, duration: bool, warnings: list[str],
             declared: Any = None) -> object:
    """``value`` (from JSON/TOML, or a string from the environment) as a value of type ``tp``; an object's keys
    override those of ``declared``, the field's default section where it has one."""
    if duration:
        try:
            return parse_duration(value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected boolean, got {_describe(value)}")
    if tp is int or tp is float:
        number = _number(tp, value)
        if number is None:
            raise ConfigError(f"{where}: expected {'integer' if tp is int else 'number'}, got {_describe(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected string, got {_describe(value)}")
    if typing.get_origin(tp) is dict:  # map[string]string: static_headers, broker.nats.raw_mode.channel_replacements
        return _string_map(value, where)
    item = _tuple_item(tp)
    if item is not None:
        if item is str and isinstance(value, str):
            value = [value]  # Centrifugo also takes a single string where a list of strings is expected
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected array, got {_describe(value)}")
        out: list[object] = []
        for i, element in enumerate(value):
            label = f"{where}[{i}]"
            if _is_dataclass_type(item) and isinstance(element, dict) and isinstance(element.get("name"), str):
                label = f"{where}[{element['name']}]"
            out.append(_convert(item, element, label, False, warnings))
        return tuple(out)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected object, got {_describe(value)}")
        return _build(tp, value, where + ".", warnings, declared)
    raise ConfigError(f"{where}: unsupported field type {tp!r}")  # a programming error in the dataclasses


def _string_map(value: object, where: str) -> dict[str, str]:
    """A JSON object of strings (``static_headers``); from the environment it comes as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: invalid JSON: {e.msg}") from e
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where}: expected an object of strings, got {_describe(value)}")
    return {str(k): v for k, v in value.items()}


def _unknown_key_warning(path: str) -> str:
    if path in _CENTRIFUGO_ONLY_SECTIONS:
        return f"unknown config key: {path} (Centrifugo option not implemented by Fugato; ignored)"
    if path in _V5_KEYS:
        return f"unknown config key: {path} (Centrifugo v5 name; in v6 layout use {_V5_KEYS[path]})"
    return f"unknown config key: {path}"


def _build(cls: type, data: Mapping[str, object], prefix: str, warnings: list[str], declared: Any = None) -> Any:
    """A ``cls`` from ``data``; keys it lacks keep the values of ``declared`` (a section whose defaults are given
    where it is declared, such as ``Config.health``), else the class's own defaults."""
    hints = _hints(cls)
    by_key = {config_key(cls, f): f for f in dataclasses.fields(cls)}
    kwargs: dict[str, object] = {}
    for key, value in data.items():
        f = by_key.get(key)
        if f is None:
            warnings.append(_unknown_key_warning(f"{prefix}{key}"))
            continue
        if value is None:  # like Go's encoding/json: null leaves the default in place
            continue
        section = f.default if dataclasses.is_dataclass(f.default) else None
        kwargs[f.name] = _convert(hints[f.name], value, f"{prefix}{key}", bool(f.metadata.get("duration")), warnings,
                                  section)
    try:
        return cls(**kwargs) if declared is None else dataclasses.replace(declared, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from e


# --- layering ------------------------------------------------------------------------------------------------------

def _read_file(path: str) -> dict[str, object]:
    suffix = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    data: object
    if suffix == ".toml":
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from e
    elif suffix in (".json", ""):
        try:
            data = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON: {e}") from e
    else:
        raise ConfigError(f"{path}: unsupported config format {suffix!r} (use .json or .toml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object")
    return data


def _set_path(data: dict[str, object], path: str, value: object) -> None:
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _from_text(leaf: _Leaf, text: str, where: str) -> object:
    """A string from the environment or the command line, decoded for its key: JSON for arrays/objects."""
    if typing.get_origin(leaf.type) is dict:
        try:
            return json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: invalid JSON: {e.msg}") from e
    if _tuple_item(leaf.type) is None:
        return text  # scalars: _convert parses strings for bool, int and duration keys
    stripped = text.strip()
    if not stripped:
        return []
    if stripped[0] in "[{":
        try:
            decoded: object = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: invalid JSON: {e.msg}") from e
        return decoded
    if _tuple_item(leaf.type) is str:  # Centrifugo v5 style: space-separated list
        return stripped.split()
    raise ConfigError(f"{where}: expected a JSON array")


def _env_pairs(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(variable name, key without prefix, value) for prefixed variables, CENTRIFUGO_ first then FUGATO_."""
    out: list[tuple[str, str, str]] = []
    for prefix in ENV_PREFIXES:
        for name in sorted(env):
            if name.startswith(prefix) and len(name) > len(prefix):
                out.append((name, name[len(prefix):], env[name]))
    return out


def _apply_env(data: dict[str, object], env: Mapping[str, str], leaves: Mapping[str, _Leaf]) -> None:
    by_env_name = {path.upper().replace(".", "_"): path for path in leaves}
    pairs = _env_pairs(env)
    for name, key, value in pairs:
        path = by_env_name.get(key)
        if path is not None:
            _set_path(data, path, _from_text(leaves[path], value, f"{path} (from {name})"))
    _apply_consumer_env(data, pairs, by_env_name)
    # Per-namespace options, CENTRIFUGO_CHANNEL_NAMESPACES_<NAME>_<OPTION>, for namespaces defined by now.
    channel = data.get("channel")
    namespaces = channel.get("namespaces") if isinstance(channel, dict) else None
    if not isinstance(namespaces, list):
        return
    options = {
        path.split(".")[-1]: leaf for path, leaf in _leaves(NamespaceConfig, "").items() if path != "name"
    }
    ns_prefix = "CHANNEL_NAMESPACES_"
    for name, key, value in pairs:
        if not key.startswith(ns_prefix) or key in by_env_name:
            continue
        rest = key[len(ns_prefix):]
        for ns in namespaces:
            if not isinstance(ns, dict) or not isinstance(ns.get("name"), str):
                continue
            head = ns["name"].upper() + "_"
            option = rest[len(head):].lower() if rest.startswith(head) else ""
            if option in options:
                where = f"channel.namespaces[{ns['name']}].{option} (from {name})"
                ns[option] = _from_text(options[option], value, where)


def _apply_consumer_env(data: dict[str, object], pairs: list[tuple[str, str, str]],
                        by_env_name: Mapping[str, str]) -> None:
    """Per-consumer options, CENTRIFUGO_CONSUMERS_<NAME>_<OPTION> or ..._<NAME>_<TYPE>_<OPTION>, for consumers
    defined by now (Centrifugo v6's names)."""
    consumers = data.get("consumers")
    if not isinstance(consumers, list):
        return
    options = {path.upper().replace(".", "_"): (path, leaf) for path, leaf in _leaves(ConsumerConfig, "").items()
               if path != "name"}
    for name, key, value in pairs:
        if not key.startswith("CONSUMERS_") or key in by_env_name:
            continue
        for consumer in consumers:
            if not isinstance(consumer, dict) or not isinstance(consumer.get("name"), str):
                continue
            head = "CONSUMERS_" + consumer["name"].upper() + "_"
            found = options.get(key[len(head):]) if key.startswith(head) else None
            if found is not None:
                path, leaf = found
                where = f"consumers[{consumer['name']}].{path} (from {name})"
                _set_path(consumer, path, _from_text(leaf, value, where))


def _apply_overrides(data: dict[str, object], overrides: Mapping[str, Any], leaves: Mapping[str, _Leaf]) -> None:
    for path, value in overrides.items():
        leaf = leaves.get(path)
        if leaf is None:
            raise ConfigError(f"unknown config key: {path}")
        _set_path(data, path, _from_text(leaf, value, path) if isinstance(value, str) else value)


def load(path: str | None, env: Mapping[str, str], overrides: Mapping[str, Any]) -> LoadResult:
    """Build a validated :class:`Config` from ``path`` (JSON or TOML; None = defaults), then ``env``
    (``FUGATO_*``/``CENTRIFUGO_*``), then ``overrides`` (dotted keys, e.g. from CLI flags).

    Unknown keys only produce warnings; wrong types and invalid values raise :class:`ConfigError`.
    """
    data: dict[str, object] = _read_file(path) if path is not None else {}
    leaves = _leaves(Config)
    _apply_env(data, env, leaves)
    _apply_overrides(data, overrides, leaves)
    warnings: list[str] = []
    config = _build(Config, data, "", warnings)
    assert isinstance(config, Config)
    warnings.extend(broker_warnings(config))
    return LoadResult(config, tuple(warnings))


def to_json_dict(config: object) -> dict[str, Any]:
    """The configuration as a JSON-ready dict in Centrifugo v6 layout, durations as Go strings (``"25s"``)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass instance, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = config_key(type(config), f)
        if f.metadata.get("duration"):
            out[key] = format_duration(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[key] = to_json_dict(value)
        elif isinstance(value, tuple):
            out[key] = [
                to_json_dict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v for v in value
            ]
        else:
            out[key] = value
    if "name" in out and isinstance(config, NamespaceConfig):
        out = {"name": out.pop("name"), **out}
    return out
