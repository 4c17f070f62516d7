"""The inter-node wire format: every message kind decodes, and anything else is a WireError (never a crash)."""

from __future__ import annotations

import msgpack
import pytest

from node.broker import wire
from node.models import ClientInfo

BODY = wire.encode_body(b'{"v":1}', ClientInfo(client="c1", user="u1"), {"t": "x"}, 1234)
HEAD = b"".join(msgpack.packb(x) for x in (wire.VERSION, wire.PUB, 7, "epoch"))  # what publish.lua writes


def test_a_publication_decodes() -> None:
    msg = wire.decode(HEAD + BODY)
    assert msg.kind == wire.PUB and msg.publication is not None
    assert (msg.publication.data, msg.publication.offset, msg.publication.tags) == (b'{"v":1}', 7, {"t": "x"})
    assert msg.publication.info == ClientInfo(client="c1", user="u1")
    assert (msg.position.offset, msg.position.epoch) == (7, "epoch")


def test_a_delta_publication_carries_the_previous_payload() -> None:
    prev = wire.encode_body(b'{"v":0}', None, None, 1)
    msg = wire.decode(HEAD + BODY + msgpack.packb(6) + prev)
    assert msg.publication is not None and msg.publication.delta and msg.publication.prev_data == b'{"v":0}'
    gap = wire.decode(HEAD + BODY + msgpack.packb(3) + prev)
    assert gap.publication is not None and gap.publication.delta and gap.publication.prev_data is None


@pytest.mark.parametrize("kind", [wire.JOIN, wire.LEAVE])
def test_join_and_leave_decode(kind: int) -> None:
    msg = wire.decode(wire.encode_join_leave(kind, ClientInfo(client="c", user="u")))
    assert msg.kind == kind and msg.info == ClientInfo(client="c", user="u")


@pytest.mark.parametrize("data", [
    b"", b"\x02\x00", msgpack.packb(2) + HEAD[1:] + BODY, b"\x01\x09", b"\x01\x00\x01", b"garbage",
    (HEAD + BODY)[:-3], HEAD + BODY + b"\x01\x01\x01", b"\x01\x01",
])
def test_anything_else_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(data)
