"""The map_publish / map_remove result object: a change's, written by publish_reply, has exactly the bytes of
the general encoding (codec.result_object, zero fields omitted)."""

from __future__ import annotations

import pytest

from node.api.executor import _map_reply
from node.models import PublishResult, StreamPosition
from node.protocol import codec


@pytest.mark.parametrize("result", [
    PublishResult(StreamPosition(3, "AbCd")),
    PublishResult(StreamPosition(0, "AbCd")),
    PublishResult(StreamPosition(7, "")),
    PublishResult(StreamPosition(0, "")),
    PublishResult(StreamPosition(1, 'q"\\é')),
    PublishResult(StreamPosition(2, "e"), suppressed=True, suppress_reason="version"),
    PublishResult(StreamPosition(2, "e"), suppressed=True),
])
def test_map_reply_bytes(result: PublishResult) -> None:
    assert _map_reply(result) == codec.result_object({
        "offset": result.position.offset, "epoch": result.position.epoch, "suppressed": result.suppressed,
        "suppress_reason": result.suppress_reason})
