"""``map_publish`` on the API fast path (node/api/fastpath.py, Executor.answer) answers exactly the bytes aiohttp's
path answers (a query string hands a request to aiohttp): results, suppressed results and every error, with the
memory map store and a Redis map broker, and a conditional write after a fast one sees the key as it should."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ServerFactory, ServerProcess, unique_channel
from redis_servers import RedisStandalone
from test_api_fastpath import connect, post, read_response

NAMESPACES: dict[str, Any] = {"channel": {"namespaces": [
    {"name": "mp", "subscription_type": "map", "map": {"mode": "persistent"}},
    {"name": "mdelta", "subscription_type": "map", "delta_publish": True, "allowed_delta_types": ["fossil"],
     "map": {"mode": "persistent"}},
    {"name": "eph", "subscription_type": "map", "map": {"mode": "ephemeral", "key_ttl": "60s"}},
    {"name": "ttl", "subscription_type": "map", "map": {"mode": "durable", "key_ttl": "60s"}},
    # Loads, and fails every operation (as Centrifugo's brokers do): internal error 100.
    {"name": "badmeta", "subscription_type": "map", "map": {"mode": "durable", "key_ttl": "60s", "stream_ttl": "10s",
                                                             "meta_ttl": "30s"}},
    {"name": "st"},
]}}


@pytest.fixture(params=["memory", "redis_map"])
def map_config(request: pytest.FixtureRequest, redis_prefix: str) -> dict[str, Any]:
    if request.param == "memory":
        return NAMESPACES
    return {**NAMESPACES, "map_broker": {"type": "redis", "redis": {"address": "redis://127.0.0.1:6379",
                                                                     "prefix": redis_prefix}}}


async def exchange(server: ServerProcess, path: str, params: Any, *, extra: str = "") -> tuple[int, bytes, bytes]:
    """(status, Content-Type, body) of one request; asserts which path answered it (aiohttp names itself)."""
    reader, writer = await connect(server)
    try:
        writer.write(post(path, json.dumps(params).encode(), server.api_key, extra=extra))
        status, headers, body = await read_response(reader)
    finally:
        writer.close()
    assert ("server" in headers) == ("?" in path), f"{path} was answered by the other path"
    return status, headers["content-type"].encode(), body


def positionless(body: bytes) -> bytes:
    """The body with its epoch written as E (each side writes to a channel of its own, with its own epoch)."""
    return re.sub(rb'"epoch":"[^"]*"', b'"epoch":"E"', body)


async def both(server: ServerProcess, params: dict[str, Any], *, extra: str = "") -> tuple[int, bytes, bytes]:
    """The same call through the fast path and through aiohttp, each on a fresh channel of the same namespace
    (``params["channel"]`` names the namespace, or is left as it is without a ``:``): their answers must match
    byte for byte but for the epoch."""
    answers = []
    for path in ("/api/map_publish", "/api/map_publish?via=aiohttp"):
        p = dict(params)
        if isinstance(p.get("channel"), str) and p["channel"].endswith(":"):
            p["channel"] += unique_channel()
        answers.append(await exchange(server, path, p, extra=extra))
    fast, slow = answers
    assert (fast[0], fast[1], positionless(fast[2])) == (slow[0], slow[1], positionless(slow[2])), params
    return fast


async def test_map_publish_fast_path_answers_as_aiohttp(server_factory: ServerFactory,
                                                        map_config: dict[str, Any]) -> None:
    server = await server_factory(map_config)
    ok = [
        {"channel": "mp:", "key": "a", "data": {"v": 1}},
        {"channel": "mp:", "key": "a", "data": "text", "tags": {"t": "1"}, "delta": True},
        {"channel": "mdelta:", "key": "a", "data": [1, 2]},
        {"channel": "eph:", "key": "a", "b64data": "AAE="},
        {"channel": "ttl:", "key": "a", "data": 1},
        {"channel": "mp:", "key": "a", "data": 1, "score": 3, "stream_data": {"x": 1}},  # ignored, as in Centrifugo
        {"channel": "mp:", "key": "a", "data": 1, "key_mode": "if_exists"},  # conditional: suppressed
        {"channel": "mp:", "key": "a", "data": 1, "idempotency_key": "i1"},
    ]
    for params in ok:
        status, _, body = await both(server, params)
        assert status == 200 and b'"result":{' in body, (params, body)
    errors = [
        ({"key": "a", "data": 1}, 107),
        ({"channel": "mp:", "data": 1}, 107),
        ({"channel": "mp:", "key": "", "data": 1}, 107),
        ({"channel": "mp:", "key": 5, "data": 1}, 107),
        ({"channel": "mp:", "key": "a"}, 107),
        ({"channel": "mp:", "key": "a", "b64data": "%%%"}, 107),
        ({"channel": "mp:", "key": "a", "data": 1, "tags": ["x"]}, 107),
        ({"channel": "mp:", "key": "a", "data": 1, "tags": {"t": 1}}, 107),
        ({"channel": "mp:", "key": "a", "data": 1, "delta": "yes"}, 107),
        ({"channel": "mp:", "key": "k" * 1025, "data": 1}, 107),
        ({"channel": "st:", "key": "a", "data": 1}, 107),  # not a map namespace
        ({"channel": "nosuch:", "key": "a", "data": 1}, 102),
        ({"channel": "mp:", "key": "a", "data": 1, "key_mode": "bogus"}, 107),
        ({"channel": "mp:", "key": "a", "data": 1, "version": False}, 107),
        ({"channel": "eph:", "key": "a", "data": 1, "version": 2}, 100),  # versions need a stream
        ({"channel": "badmeta:", "key": "a", "data": 1}, 100),
    ]
    for params, code in errors:
        for extra in ("", "X-Centrifugo-Error-Mode: transport\r\n"):
            status, _, body = await both(server, params, extra=extra)
            got = json.loads(body)
            assert (got["error"]["code"] if not extra else got["code"]) == code, (params, extra, body)
    status, _, body = await exchange(server, "/api/map_publish", [1])  # not an object: the general path
    assert (status, json.loads(body)) == (200, {"error": {"code": 107, "message": "bad request"}})


async def test_fast_writes_keep_the_keys_version(server_factory: ServerFactory, map_config: dict[str, Any]) -> None:
    server = await server_factory(map_config)
    channel = "mp:" + unique_channel()
    path = "/api/map_publish"
    versioned = {"channel": channel, "key": "a", "data": {"v": 1}, "version": 5}
    # (A result leaves out what is false or empty, as Centrifugo's JSON does.)
    assert "suppressed" not in json.loads((await exchange(server, path, versioned))[2])["result"]
    fast = json.loads((await exchange(server, path, {"channel": channel, "key": "a", "data": {"v": 2}}))[2])
    assert fast["result"]["offset"] == 2 and "suppressed" not in fast["result"]
    # The unversioned write kept version 5: a write of version 5 is refused, one of 6 goes ahead.
    again = json.loads((await exchange(server, path, {**versioned, "data": {"v": 3}}))[2])["result"]
    assert (again["suppressed"], again["suppress_reason"], again["offset"]) == (True, "version", 2)
    newer = json.loads((await exchange(server, path, {**versioned, "version": 6}))[2])["result"]
    assert (newer.get("suppressed", False), newer["offset"]) == (False, 3)
    state = await server.api_result("map_read_state", {"channel": channel})
    assert [(p["key"], p["data"]) for p in state["entries"]] == [("a", {"v": 1})]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisStandalone]:
    redis = RedisStandalone(tmp_path / "redis").start()
    yield redis
    redis.stop()


async def test_an_engine_failure_answers_as_aiohttp(server_factory: ServerFactory, own_redis: RedisStandalone,
                                                    redis_prefix: str) -> None:
    server = await server_factory({**NAMESPACES, "map_broker": {"type": "redis", "redis": {
        "address": own_redis.url, "prefix": redis_prefix}}})
    assert (await both(server, {"channel": "mp:", "key": "a", "data": 1}))[0] == 200
    own_redis.stop()
    status, _, body = await asyncio.wait_for(both(server, {"channel": "mp:", "key": "a", "data": 1}), 60)
    assert (status, json.loads(body)["error"]["code"]) == (200, 100)
