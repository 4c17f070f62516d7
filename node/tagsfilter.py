"""Tags filters of subscriptions (the protocol's ``FilterNode``, a namespace's ``allow_tags_filter``): a
subscriber gets only the publications whose tags match. A leaf compares one tag (``cmp``: eq, neq, in, nin,
ex, nex, sw, ew, ct, and the numeric lt, lte, gt, gte); "and", "or", "not" combine nodes. Checked and
evaluated as centrifuge does: a numeric comparison with a value that is not a number is false.

A filter is compiled once at subscribe time; ``key`` is its canonical form, so a broadcast evaluates each
distinct filter once however many subscribers share it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final, TypeVar

import orjson

_WITH_VAL: Final = frozenset(("eq", "neq", "sw", "ew", "ct", "lt", "lte", "gt", "gte"))
_WITH_VALS: Final = frozenset(("in", "nin"))
_BARE: Final = frozenset(("ex", "nex"))
MAX_NODES: Final = 256  # a bound on a filter's size (one subscribe command; each node is evaluated per publication)

Tags = Mapping[str, str] | None
_Test = Callable[[Mapping[str, str]], bool]
T = TypeVar("T")


class InvalidFilter(ValueError):
    """A filter centrifuge would refuse (the subscribe gets 107)."""


def _number(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _leaf(key: str, cmp: str, val: str, vals: tuple[str, ...]) -> _Test:
    if cmp == "eq":
        return lambda t: t.get(key) == val
    if cmp == "neq":
        return lambda t: t.get(key) != val
    if cmp == "in":
        return lambda t: t.get(key, "") in vals
    if cmp == "nin":
        return lambda t: t.get(key, "") not in vals
    if cmp == "ex":
        return lambda t: key in t
    if cmp == "nex":
        return lambda t: key not in t
    if cmp == "sw":
        return lambda t: key in t and t[key].startswith(val)
    if cmp == "ew":
        return lambda t: key in t and t[key].endswith(val)
    if cmp == "ct":
        return lambda t: key in t and val in t[key]
    bound = _number(val)
    order = {"lt": (-1,), "lte": (-1, 0), "gt": (1,), "gte": (1, 0)}[cmp]

    def compare(t: Mapping[str, str]) -> bool:
        have = _number(t[key]) if key in t else None
        if have is None or bound is None:
            return False
        return (have > bound) - (have < bound) in order

    return compare


def _str(node: Mapping[str, Any], name: str) -> str:
    value = node.get(name, "")
    if not isinstance(value, str):
        raise InvalidFilter(f"{name} must be a string")
    return value


def _compile(node: object, budget: list[int]) -> _Test:
    if not isinstance(node, Mapping):
        raise InvalidFilter("a filter node must be an object")
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidFilter("filter too large")
    op = _str(node, "op")
    children = node.get("nodes") or []
    if not isinstance(children, list):
        raise InvalidFilter("nodes must be a list")
    if op == "":
        cmp, key, val = _str(node, "cmp"), _str(node, "key"), _str(node, "val")
        raw_vals = node.get("vals") or []
        if not isinstance(raw_vals, list) or not all(isinstance(v, str) for v in raw_vals):
            raise InvalidFilter("vals must be a list of strings")
        vals = tuple(raw_vals)
        if cmp in _WITH_VAL:
            if not val or vals:
                raise InvalidFilter(f"{cmp} takes val (and no vals)")
        elif cmp in _WITH_VALS:
            if not vals or val:
                raise InvalidFilter(f"{cmp} takes vals (and no val)")
        elif cmp in _BARE:
            if val or vals:
                raise InvalidFilter(f"{cmp} takes neither val nor vals")
        else:
            raise InvalidFilter(f"unknown comparison {cmp!r}")
        if not key and cmp not in _BARE:
            raise InvalidFilter("a leaf needs a key")
        return _leaf(key, cmp, val, vals)
    tests = [_compile(child, budget) for child in children]
    if op == "and" and tests:
        return lambda t: all(test(t) for test in tests)
    if op == "or" and tests:
        return lambda t: any(test(t) for test in tests)
    if op == "not" and len(tests) == 1:
        only = tests[0]
        return lambda t: not only(t)
    raise InvalidFilter(f"bad {op!r} node")


class TagsFilter:
    __slots__ = ("_test", "key")

    def __init__(self, node: object) -> None:
        """``node``: the subscribe command's ``tf`` (a JSON object, or the protobuf FilterNode as a dict)."""
        self._test = _compile(node, [MAX_NODES])
        self.key = orjson.dumps(node, option=orjson.OPT_SORT_KEYS).decode()

    def matches(self, tags: Tags) -> bool:
        return self._test(tags or {})


def select(tags_filter: TagsFilter | None, items: Sequence[T], tags: Callable[[T], Tags]) -> Sequence[T]:
    """What a subscriber with ``tags_filter`` is shown of stored items (recovered publications, a map's state or
    stream page): those whose ``tags(item)`` match, in order; ``items`` itself without a filter. Live
    publications are filtered by the fan-out instead, once per distinct filter of a broadcast."""
    if tags_filter is None:
        return items
    return [item for item in items if tags_filter.matches(tags(item))]
