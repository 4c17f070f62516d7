"""The payload span finder: the exact bytes of a value inside a JSON document, whatever its whitespace, escapes
and nesting, as the JSON client protocol's decoder takes a command's ``data``."""

from __future__ import annotations

import orjson
import pytest

from node.protocol import codec, rawjson

PAYLOADS = [
    b'{ "z" : 1,\t"a":[ 1 , 2 ] }',
    b'"a string with \\" a quote, a } brace and a \\\\ backslash"',
    b'[ {"k":"]"}, [], {} , "x{" ]',
    b"-1.5e+10",
    b"true",
    b"null",
    b'{"deep":{"er":[{"est":"\\u00e9\\n"}]}}',
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("layout", [
    b'{"id":2,"publish":{"channel":"c","data":%s}}',
    b'{ "publish" : { "data" :  %s , "channel" : "c" } , "id" : 2 }',
    b'{"id":2,"publish":{"data":1,"channel":"c","data":%s}}',  # a repeated key: the last one counts
    b'{"publish":{"channel":"c","d\\u0061ta":%s},"id":2}',  # an escaped key
])
def test_command_data_is_the_exact_span(layout: bytes, payload: bytes) -> None:
    line = layout % payload
    (cmd,) = codec.decode_frame(line)
    if payload == b"null":
        assert cmd.data is None  # null data is no data
    else:
        assert cmd.data == payload and cmd.params["data"] == payload


def test_span_of_nested_paths_and_missing_steps() -> None:
    doc = b' {"a": {"b": [1, {"c": 2}], "s": "x"}, "n": 3} '
    assert rawjson.span(doc, ("a", "b")) == b'[1, {"c": 2}]'
    assert rawjson.span(doc, ("a", "s")) == b'"x"'
    assert rawjson.span(doc, ("a", "missing")) is None
    assert rawjson.span(doc, ("n", "deeper")) is None  # not an object


def test_keep_payloads_in_a_batch() -> None:
    body = b'{"commands": [{"publish": {"channel": "a", "data": { "x" :1 }}}, {"info": {}},' \
           b' {"broadcast": {"channels": ["b"], "data": [ 2 ]}}], "parallel": true}'
    params = orjson.loads(body)
    rawjson.keep_payloads(body, params)
    assert params["commands"][0]["publish"]["data"] == b'{ "x" :1 }'
    assert params["commands"][2]["broadcast"]["data"] == b"[ 2 ]"
    assert params["parallel"] is True
