"""The HTTP proxy's connection pool (node/proxy/http_client.py) against real loopback servers: connections are
kept and reused, a connection the backend closed is replaced, answers that are not HTTP fail the call, and a
header value cannot split the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from harness import wait_until

from node.proxy.http_client import HttpCallError, HttpPool, render_headers

HEADERS = render_headers({"Content-Type": "application/json"})


@asynccontextmanager
async def backend(chunked: bool = False) -> AsyncIterator[tuple[str, list[object]]]:
    """An aiohttp app echoing the body; ``peers`` gets the client address of each request (one per connection
    when connections are reused)."""
    peers: list[object] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.read()
        if chunked:
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(body), 3):
                await resp.write(body[i:i + 3])
            await resp.write_eof()
            return resp
        return web.Response(body=body)

    app = web.Application()
    app.router.add_post("/hook", echo)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/hook")), peers
    finally:
        await server.close()


async def test_calls_reuse_kept_alive_connections() -> None:
    async with backend() as (url, peers):
        pool = HttpPool(url, limit=4, timeout=5)
        for i in range(20):
            assert await pool.post(b'{"n":%d}' % i, HEADERS) == (200, b'{"n":%d}' % i)
        assert len(set(peers)) == 1  # one connection for 20 sequential calls
        answers = await asyncio.gather(*(pool.post(b"%d" % i, HEADERS) for i in range(40)))
        assert [a[1] for a in answers] == [b"%d" % i for i in range(40)]
        assert len(set(peers)) <= 4  # never more connections than the limit
        pool.close()


async def test_a_connection_the_backend_closed_is_replaced() -> None:
    """The backend answers one request per connection, then closes it (as at its keep-alive timeout)."""
    connections = 0

    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(one_answer, "127.0.0.1", 0)
    pool = HttpPool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook", limit=2, timeout=5)
    try:
        assert await pool.post(b"1", HEADERS) == (200, b"ok")
        # At once (the close may not have arrived: a reused connection found closed is retried once) ...
        assert await pool.post(b"2", HEADERS) == (200, b"ok")
        idle = pool._idle[0]
        deadline = asyncio.get_running_loop().time() + 10
        while not idle.closed:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)  # the close arrives as an event of the connection only
        # ... and after the close has arrived.
        assert await pool.post(b"3", HEADERS) == (200, b"ok")
        assert connections == 3
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_chunked_answers_are_joined() -> None:
    async with backend(chunked=True) as (url, _):
        pool = HttpPool(url, limit=1, timeout=5)
        assert await pool.post(b'{"result":{"user":"u"}}', HEADERS) == (200, b'{"result":{"user":"u"}}')
        pool.close()


@pytest.mark.parametrize("reply", [b"this is not HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
async def test_an_answer_that_is_not_http_fails_the_call(reply: bytes) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = HttpPool(f"http://127.0.0.1:{port}/hook", limit=1, timeout=5)
    try:
        with pytest.raises(HttpCallError):
            await pool.post(b"{}", HEADERS)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_a_backend_that_is_down_fails_the_call() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(HttpCallError, match="cannot connect"):
        await HttpPool(f"http://127.0.0.1:{port}/hook", limit=1, timeout=5).post(b"{}", HEADERS)


async def test_header_values_cannot_split_the_request() -> None:
    rendered = render_headers({"X-Test": "ok", "X-Evil": "a\r\nX-Injected: 1", "Bad:Name": "v"})
    assert rendered == b"X-Test: ok\r\n"
    async with backend() as (url, _):
        pool = HttpPool(url, limit=1, timeout=5)
        assert (await pool.post(b"x", rendered + HEADERS))[0] == 200
        pool.close()


@asynccontextmanager
async def held_backend() -> AsyncIterator[tuple[HttpPool, dict[str, object]]]:
    """A raw keep-alive backend answering each request with its body, except a body ``stall`` (never answered)
    and a body ``hold`` (answered once ``state["release"]`` is set); a pool of 4 with a 0.3 s timeout."""
    release = asyncio.Event()
    state: dict[str, object] = {"release": release, "eofs": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                if body == b"stall":
                    continue
                if body == b"hold":
                    await release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            state["eofs"] = int(state["eofs"]) + 1  # type: ignore[call-overload]
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = HttpPool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook", limit=4, timeout=0.3)
    try:
        yield pool, state
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def outcome(call: Awaitable[tuple[int, bytes]]) -> tuple[int, bytes] | BaseException:
    """The call's answer or exception; a call that is still running after 10 s fails the test."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done, "the call was not bounded by the pool's timeout"
    return task.exception() or task.result()


async def test_calls_on_kept_alive_connections_are_bounded_by_the_timeout() -> None:
    async with held_backend() as (pool, state):
        # Three connections opened, then kept: the calls below all take an idle one.
        assert await asyncio.gather(*(pool.post(b"%d" % i, HEADERS) for i in range(3))) == [
            (200, b"0"), (200, b"1"), (200, b"2")]
        results = await asyncio.gather(outcome(pool.post(b"a", HEADERS)), outcome(pool.post(b"stall", HEADERS)),
                                       outcome(pool.post(b"b", HEADERS)))
        assert results[0] == (200, b"a") and results[2] == (200, b"b")
        assert isinstance(results[1], TimeoutError)
        # The stalled connection is closed by the pool (its answer may still come), the others are reused.
        await wait_until(lambda: state["eofs"] == 1, what="the stalled connection closed")
        # The pool's one timer keeps working for later calls, and the pool stays usable.
        assert isinstance(await outcome(pool.post(b"stall", HEADERS)), TimeoutError)
        assert await outcome(pool.post(b"c", HEADERS)) == (200, b"c")


async def test_a_caller_waiting_for_a_connection_can_be_cancelled() -> None:
    async with held_backend() as (pool, state):
        pool._limit = 1
        holder = asyncio.ensure_future(pool.post(b"hold", HEADERS))
        await wait_until(lambda: pool._busy == 1, what="the only connection taken")
        waiting = asyncio.ensure_future(pool.post(b"w", HEADERS))
        later = asyncio.ensure_future(pool.post(b"later", HEADERS))
        await wait_until(lambda: len(pool._slot_waiters) == 2, what="two callers waiting for the connection")
        waiting.cancel()
        state["release"].set()  # type: ignore[attr-defined]
        assert await outcome(holder) == (200, b"hold")
        assert await outcome(later) == (200, b"later")  # the slot went on to the caller still waiting
        assert waiting.cancelled()
