"""Tags filters evaluate as centrifuge's FilterNode does, and malformed ones are refused."""

from __future__ import annotations

from typing import Any

import pytest

from node.tagsfilter import InvalidFilter, TagsFilter, select


@pytest.mark.parametrize(("node", "tags", "expected"), [
    ({"key": "a", "cmp": "eq", "val": "1"}, {"a": "1"}, True),
    ({"key": "a", "cmp": "eq", "val": "1"}, None, False),
    ({"key": "a", "cmp": "neq", "val": "1"}, {}, True),
    ({"key": "a", "cmp": "in", "vals": ["x", "y"]}, {"a": "y"}, True),
    ({"key": "a", "cmp": "nin", "vals": ["x"]}, {}, True),
    ({"cmp": "ex", "key": "a"}, {"a": ""}, True),
    ({"cmp": "nex", "key": "a"}, {"a": ""}, False),
    ({"key": "a", "cmp": "sw", "val": "ab"}, {"a": "abc"}, True),
    ({"key": "a", "cmp": "ew", "val": "bc"}, {"a": "abc"}, True),
    ({"key": "a", "cmp": "ct", "val": "b"}, {"a": "abc"}, True),
    ({"key": "a", "cmp": "gt", "val": "9.5"}, {"a": "1e1"}, True),
    ({"key": "a", "cmp": "lte", "val": "10"}, {"a": "10.0"}, True),
    ({"key": "a", "cmp": "lt", "val": "10"}, {"a": "ten"}, False),
    ({"key": "a", "cmp": "gte", "val": "x"}, {"a": "1"}, False),
    ({"op": "and", "nodes": [{"key": "a", "cmp": "ex"}, {"key": "b", "cmp": "nex"}]}, {"a": "1"}, True),
    ({"op": "or", "nodes": [{"key": "a", "cmp": "ex"}, {"key": "b", "cmp": "ex"}]}, {"c": "1"}, False),
    ({"op": "not", "nodes": [{"key": "a", "cmp": "ex"}]}, {"c": "1"}, True),
])
def test_matches(node: dict[str, Any], tags: dict[str, str] | None, expected: bool) -> None:
    assert TagsFilter(node).matches(tags) is expected


@pytest.mark.parametrize("node", [
    {"key": "a", "cmp": "eq"}, {"key": "a", "cmp": "eq", "val": "1", "vals": ["1"]}, {"key": "a", "cmp": "in"},
    {"cmp": "ex", "key": "a", "val": "1"}, {"key": "a", "cmp": "like", "val": "1"}, {"cmp": "eq", "val": "1"},
    {"op": "and", "nodes": []}, {"op": "not", "nodes": [{"cmp": "ex", "key": "a"}] * 2}, {"op": "xor"},
    {"op": "and", "nodes": "x"}, [], {"key": 1, "cmp": "ex"},
    {"op": "or", "nodes": [{"cmp": "ex", "key": "a"}] * 300},
])
def test_malformed_filters_are_refused(node: Any) -> None:
    with pytest.raises(InvalidFilter):
        TagsFilter(node)


def test_equal_filters_share_a_key() -> None:
    one, same = TagsFilter({"key": "a", "cmp": "eq", "val": "1"}), TagsFilter({"val": "1", "cmp": "eq", "key": "a"})
    assert one.key == same.key


def test_select_keeps_the_matching_items_in_order_and_all_without_a_filter() -> None:
    items = [("k1", {"t": "a"}), ("k2", None), ("k3", {"t": "a", "u": "1"}), ("k4", {"t": "b"})]
    kept = select(TagsFilter({"key": "t", "cmp": "eq", "val": "a"}), items, lambda item: item[1])
    assert [k for k, _ in kept] == ["k1", "k3"]
    assert select(None, items, lambda item: item[1]) is items
