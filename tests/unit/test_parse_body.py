"""API request bodies keep every payload's exact bytes, whether the body is compact JSON (taken by the
dump-and-compare shortcut) or written any other way (scanned for the payloads' spans)."""

from __future__ import annotations

import pytest

from node.api.executor import _raw
from node.api.http import parse_body

BODIES = [
    b'{"channel":"a","data":{"x":1,"y":[1,2.5,"\xc3\xa9"]}}',  # compact: the shortcut
    b'{"channel":"a","data":{"x":1,"y":[1,2.5,"\xc3\xa9"]}}\n',  # compact with a trailing newline
    b'{"channel": "a", "data": {"x": 1, "y": [1, 2.5, "\xc3\xa9"]}}',  # spaces
    b'{"channel":"a","data":{"y":1e5,"x":"\\u00e9"}}',  # an exponent and an escape orjson would not write
    b'{"channel":"a","data":{"x":1},"data":{"x":2}}',  # a repeated key: the last one counts
]
EXPECTED = [b'{"x":1,"y":[1,2.5,"\xc3\xa9"]}', b'{"x":1,"y":[1,2.5,"\xc3\xa9"]}',
            b'{"x": 1, "y": [1, 2.5, "\xc3\xa9"]}', b'{"y":1e5,"x":"\\u00e9"}', b'{"x":2}']


@pytest.mark.parametrize(("body", "expected"), list(zip(BODIES, EXPECTED, strict=True)))
def test_a_publish_payload_is_the_bytes_sent(body: bytes, expected: bytes) -> None:
    assert _raw(parse_body(body), "data") == expected


def test_batch_payloads_are_the_bytes_sent() -> None:
    compact = b'{"commands":[{"publish":{"channel":"a","data":[1,{"k":"v"}]}},{"publish":{"channel":"b","data":7}}]}'
    spaced = compact.replace(b":[1,", b": [1, ")
    for body, first in ((compact, b'[1,{"k":"v"}]'), (spaced, b'[1, {"k":"v"}]')):
        commands = parse_body(body)["commands"]
        assert [_raw(c["publish"], "data") for c in commands] == [first, b"7"]
