"""Exact byte spans of values inside a JSON document that orjson has already validated.

A publication's payload is opaque: the node stores and delivers the bytes a JSON client or an API caller sent,
whitespace and key order included, which a parse and a re-serialisation would lose. orjson still parses (and
validates) the command; this scanner then walks only the members on the way to a payload and skips each
value with a few regular-expression steps (strings whole, containers by their brackets), so a command costs
a handful of C-level scans more than the parse alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, Final

import orjson

_WS: Final = re.compile(rb"[ \t\r\n]*")
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STRUCTURAL: Final = re.compile(rb'["\[\]{}]')
_SCALAR_END: Final = re.compile(rb"[,\]} \t\r\n]")
_QUOTE, _OPEN_OBJECT, _OPEN_ARRAY = 0x22, 0x7B, 0x5B


class Raw(bytes):
    """Payload bytes taken verbatim from an API request (a JSON value's exact span, or GRPC bytes) in place of
    the parsed value: the executor stores them as they are (as plain ``bytes``: orjson, for one, does not take
    a subclass) instead of serialising a parsed value again."""

    __slots__ = ()


def load_object(buf: bytes) -> dict[str, Any] | None:
    """The JSON object ``buf`` holds; None when it is not JSON or not an object (a request body the caller refuses)."""
    try:
        obj = orjson.loads(buf)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def skip_ws(buf: bytes, pos: int) -> int:
    m = _WS.match(buf, pos)
    return m.end() if m is not None else pos


def value_end(buf: bytes, pos: int) -> int:
    """The end of the (valid) JSON value starting at ``pos``."""
    first = buf[pos]
    if first == _QUOTE:
        m = _STRING.match(buf, pos)
        assert m is not None  # orjson validated the document
        return m.end()
    if first in (_OPEN_OBJECT, _OPEN_ARRAY):
        depth = 0
        while True:
            m = _STRUCTURAL.search(buf, pos)
            assert m is not None
            char = buf[m.start()]
            if char == _QUOTE:
                s = _STRING.match(buf, m.start())
                assert s is not None
                pos = s.end()
                continue
            depth += 1 if char in (_OPEN_OBJECT, _OPEN_ARRAY) else -1
            pos = m.end()
            if depth == 0:
                return pos
    m = _SCALAR_END.search(buf, pos)
    return m.start() if m is not None else len(buf)


def members(buf: bytes, pos: int) -> Iterator[tuple[str, int, int]]:
    """(key, value start, value end) of each member of the object starting at ``pos``."""
    pos = skip_ws(buf, pos + 1)  # past "{"
    while buf[pos] != 0x7D:  # "}"
        key_end = value_end(buf, pos)
        raw_key = buf[pos + 1:key_end - 1]
        key = orjson.loads(buf[pos:key_end]) if b"\\" in raw_key else raw_key.decode()
        start = skip_ws(buf, skip_ws(buf, key_end) + 1)  # past ":"
        end = value_end(buf, start)
        yield key, start, end
        pos = skip_ws(buf, end)
        if buf[pos] == 0x2C:  # ","
            pos = skip_ws(buf, pos + 1)


def items(buf: bytes, pos: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each element of the array starting at ``pos``."""
    pos = skip_ws(buf, pos + 1)  # past "["
    while buf[pos] != 0x5D:  # "]"
        end = value_end(buf, pos)
        yield pos, end
        pos = skip_ws(buf, end)
        if buf[pos] == 0x2C:
            pos = skip_ws(buf, pos + 1)


def member(buf: bytes, pos: int, key: str) -> tuple[int, int] | None:
    """The span of member ``key`` of the object at ``pos`` (the last one, as a parser keeps the last)."""
    found = None
    for name, start, end in members(buf, pos):
        if name == key:
            found = (start, end)
    return found


def span(buf: bytes, path: Sequence[str]) -> bytes | None:
    """The exact bytes at ``path`` (object keys from the top-level object), or None if a step is missing or
    not an object."""
    pos = skip_ws(buf, 0)
    end = len(buf)
    for key in path:
        if pos >= len(buf) or buf[pos] != _OPEN_OBJECT:
            return None
        found = member(buf, pos, key)
        if found is None:
            return None
        pos, end = found
    return buf[pos:end]


# Request members whose values are payloads (kept as sent), and members that hold requests (a batch's
# ``commands``, each ``{"<method>": request}``; the legacy API's ``params``).
PAYLOAD_KEYS: Final = frozenset({"data", "info"})
_NESTED_KEYS: Final = frozenset({"commands", "params"})


def keep_payloads(buf: bytes, obj: object, pos: int = -1) -> None:
    """Replace the payload members of ``obj`` (parsed from ``buf``, the object starting at ``pos``) with their
    exact bytes as ``Raw``, recursing into batch commands."""
    if not isinstance(obj, dict) or not (obj.keys() & PAYLOAD_KEYS or obj.keys() & _NESTED_KEYS):
        return
    if pos < 0:
        pos = skip_ws(buf, 0)
    for key, start, end in members(buf, pos):
        value = obj.get(key)
        if value is None:
            continue
        if key in PAYLOAD_KEYS:
            obj[key] = Raw(buf[start:end])
        elif key == "params":
            keep_payloads(buf, value, start)
        elif key == "commands" and isinstance(value, list) and buf[start] == _OPEN_ARRAY:
            for command, (item_start, _) in zip(value, items(buf, start), strict=False):
                if isinstance(command, dict) and buf[item_start] == _OPEN_OBJECT:
                    for method, request_start, _ in members(buf, item_start):
                        keep_payloads(buf, command.get(method), request_start)
