"""The API fast path's cache of parsed request heads answers exactly as parsing each head in full does."""

from __future__ import annotations

import asyncio

from node.api import fastpath
from node.api.executor import Executor
from node.api.http import ApiHandler
from node.config import Config, HttpApiConfig
from node.server import build_node

BASE = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: k"
HEADS = [
    BASE + b"\r\nContent-Length: 12",
    BASE + b"\r\nContent-Length: 13",  # the same head but for its length: one cache entry
    BASE + b"\r\nContent-Length:  7  ",  # spaces around the value, as the full parse strips them
    BASE + b"\r\nContent-Length: 1x",  # not a number
    BASE + b"\r\nContent-Length: 999999",  # over the body limit
    BASE + b"\r\nContent-Length: 5\r\ncontent-length: 5",  # repeated: aiohttp's
    BASE + b"\r\nContent-Length: 5\r\nContent-Length: 5",
    b"POST /api/publish HTTP/1.1\r\nContent-Length: 3\r\nHost: x",  # the length first
    BASE + b"\r\ncontent-length: 4",  # another spelling: parsed in full
    BASE + b"\r\nContent-Length:4",
    BASE,  # no length: an empty body
    BASE + b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked",
    BASE + b"\r\nContent-Length: 4\r\nBroken line",
    BASE + b"\r\nContent-Length: 4\r\nName : value",
    b"POST /api/nosuchmethod HTTP/1.1\r\nHost: x\r\nContent-Length: 2",
    b"POST /api/publish HTTP/1.0\r\nHost: x\r\nContent-Length: 2",
    b"GET /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2",
    BASE + b"\r\nContent-Length: 6\r\nConnection: close\r\nX-Centrifugo-Error-Mode: transport",
]


def decided(fast: fastpath.FastApi, parsed: tuple[fastpath.Head, int] | None) -> object:
    """A parse's outcome as plain values (its headers less Content-Length, which only the length carries)."""
    if parsed is None:
        return None
    head, length = parsed
    return (head.method, length, {k: v for k, v in head.headers.items() if k != b"content-length"},
            head.authorized, head.close, head.mode)


async def test_cached_heads_parse_as_full_parses() -> None:
    handler = ApiHandler(Executor(build_node(Config())), HttpApiConfig(handler_prefix="/api", key="k"))
    fast = fastpath.FastApi(asyncio.Protocol, handler, 1024)
    conn = fastpath.FastApiProtocol(fast)
    for _ in range(2):  # the second round from the cache
        for raw in HEADS:
            full = conn._parse_fields(raw)
            expected = None if full is None else decided(fast, (fast.head(full[0], full[2]), full[1]))
            assert decided(fast, conn._parse_head(raw)) == expected, raw
    assert len(fast.heads) < len(HEADS), "heads that differ only in their length share an entry"
    assert decided(fast, conn._parse_head(HEADS[0])) == ("publish", 12, {b"host": b"x", b"x-api-key": b"k"}, True,
                                                         False, "")
    assert decided(fast, conn._parse_head(HEADS[-1]))[3:] == (True, True, "transport")
    assert conn._parse_head(HEADS[4]) is None
    wrong_key = b"POST /api/publish HTTP/1.1\r\nX-API-Key: K\r\nContent-Length: 2"
    for _ in range(2):
        parsed = conn._parse_head(wrong_key)
        assert parsed is not None and not parsed[0].authorized


async def test_the_cache_is_bounded() -> None:
    handler = ApiHandler(Executor(build_node(Config())), HttpApiConfig(handler_prefix="/api", key="k"))
    fast = fastpath.FastApi(asyncio.Protocol, handler, 1024)
    conn = fastpath.FastApiProtocol(fast)
    for i in range(fastpath.HEAD_CACHE_SIZE * 2 + 3):
        assert conn._parse_head(BASE + b"\r\nX-Request: %d\r\nContent-Length: 2" % i) is not None
        assert len(fast.heads) <= fastpath.HEAD_CACHE_SIZE
