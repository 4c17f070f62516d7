"""The HTTP proxy's connection pool (node/proxy/http_client.py) against real loopback servers: connections are
kept and reused, a connection the backend closed is replaced, answers that are not HTTP fail the call, and a
header value cannot split the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

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
        pool = HttpPool(url, limit=4)
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
    pool = HttpPool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook", limit=2)
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
        pool = HttpPool(url, limit=1)
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
    pool = HttpPool(f"http://127.0.0.1:{port}/hook", limit=1)
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
        await HttpPool(f"http://127.0.0.1:{port}/hook", limit=1).post(b"{}", HEADERS)


async def test_header_values_cannot_split_the_request() -> None:
    rendered = render_headers({"X-Test": "ok", "X-Evil": "a\r\nX-Injected: 1", "Bad:Name": "v"})
    assert rendered == b"X-Test: ok\r\n"
    async with backend() as (url, _):
        pool = HttpPool(url, limit=1)
        assert (await pool.post(b"x", rendered + HEADERS))[0] == 200
        pool.close()
