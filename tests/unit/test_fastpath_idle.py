"""The API fast path closes keep-alive connections left idle, from one sweeping timer (in-process, real sockets)."""

from __future__ import annotations

import asyncio

import pytest

from node.api import fastpath
from node.api.executor import Executor
from node.api.http import ApiHandler
from node.config import Config, HttpApiConfig
from node.server import build_node


async def test_idle_connections_are_closed_and_active_ones_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(fastpath, "SWEEP_INTERVAL", 0.05)
    node = build_node(Config())
    handler = ApiHandler(Executor(node), HttpApiConfig(handler_prefix="/api", key="k"))
    fast = fastpath.FastApi(asyncio.Protocol, handler, 1024)
    server = await asyncio.get_running_loop().create_server(fast, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: 2\r\n\r\n{}"
        for _ in range(8):  # a request every 0.1 s keeps this one open past the idle timeout
            busy_writer.write(request)
            head = await busy_reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await busy_reader.readexactly(length)
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(idle_reader.read(), 5) == b"", "closed after the idle timeout"
        assert not busy_reader.at_eof()
        assert len(fast.connections) == 1
        fast.close_idle()
        assert await asyncio.wait_for(busy_reader.read(), 5) == b"", "shutdown closes it between requests"
        idle_writer.close()
        busy_writer.close()
        await asyncio.gather(idle_writer.wait_closed(), busy_writer.wait_closed())
    finally:
        server.close()
        await server.wait_closed()
