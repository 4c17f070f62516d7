"""The lean HTTP path of the server API (node/api/fastpath.py) on raw keep-alive connections: it answers plain
API requests itself, in order, and hands the connection to aiohttp, bytes intact, at anything else."""

from __future__ import annotations

import asyncio
import json

from harness import ServerFactory, ServerProcess, unique_channel


async def connect(server: ServerProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(server.host, server.port)


def post(path: str, body: bytes, key: str, *, extra: str = "") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}")
    if key:
        head += f"X-API-Key: {key}\r\n"
    return head.encode() + b"\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def test_pipelined_requests_are_answered_in_order(module_server: ServerProcess) -> None:
    server = module_server
    channel = unique_channel()
    reader, writer = await connect(server)
    pub = json.dumps({"channel": channel, "data": {"n": 1}}).encode()
    hist = json.dumps({"channel": channel, "limit": 10}).encode()
    writer.write(post("/api/publish", pub, server.api_key) + post("/api/history", hist, server.api_key)
                 + post("/api/info", b"{not json", server.api_key) + post("/api/info", b"{}", ""))
    statuses = []
    bodies = []
    for i in range(4):
        status, headers, body = await read_response(reader)
        assert "server" not in headers, "the fast path answered (aiohttp would name itself)"
        if i < 2:
            assert headers["content-type"] == "application/json"  # Centrifugo's, byte for byte
        statuses.append(status)
        bodies.append(body)
    assert statuses == [200, 200, 400, 401]
    assert "offset" in json.loads(bodies[0])["result"]
    assert [p["data"] for p in json.loads(bodies[1])["result"]["publications"]] == [{"n": 1}]
    assert bodies[2] == b"Bad Request"
    writer.close()


async def test_a_body_in_pieces_waits_for_the_rest(module_server: ServerProcess) -> None:
    server = module_server
    reader, writer = await connect(server)
    request = post("/api/publish", json.dumps({"channel": unique_channel(), "data": "x" * 5000}).encode(),
                   server.api_key)
    for i in range(0, len(request), 700):
        writer.write(request[i:i + 700])
        await writer.drain()
        await asyncio.sleep(0.01)
    status, _, body = await read_response(reader)
    assert status == 200 and "result" in json.loads(body)
    writer.close()


async def test_other_requests_hand_the_connection_to_aiohttp(module_server: ServerProcess) -> None:
    server = module_server
    reader, writer = await connect(server)
    key = server.api_key
    writer.write(post("/api/info", b"{}", key))
    status, headers, body = await read_response(reader)
    assert status == 200 and "nodes" in json.loads(body)["result"]
    assert "server" not in headers, "the fast path answered"
    # A GET (aiohttp's business) on the same keep-alive connection, with an API call pipelined behind it: both
    # are answered by aiohttp now, from the bytes the fast path had buffered.
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + post("/api/info", b"{}", key))
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)) == (200, {})
    status, headers, body = await read_response(reader)
    assert status == 200 and "nodes" in json.loads(body)["result"]
    assert "server" in headers, "aiohttp answered (it names itself)"
    assert headers["content-type"] == "application/json"  # the same as the fast path's
    writer.close()


async def test_unusual_api_requests_get_aiohttp_answers(module_server: ServerProcess) -> None:
    server = module_server
    key = server.api_key
    cases = [
        # the key in the query string
        (f"POST /api/info?api_key={key} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode(), 200),
        # a chunked body
        (f"POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
         "2\r\n{}\r\n0\r\n\r\n".encode(), 200),
        # the transport error mode: HTTP statuses for API errors
        (post("/api/publish", b"{}", key, extra="X-Centrifugo-Error-Mode: transport\r\n"), 400),
        # an unknown method
        (post("/api/nosuch", b"{}", key), 404),
        # a body over the limit
        (post("/api/publish", b"{" + b" " * (2 * 1024 * 1024) + b"}", key), 413),
    ]
    for request, expected in cases:
        reader, writer = await connect(server)
        writer.write(request)
        status, _, _ = await read_response(reader)
        assert status == expected, request[:80]
        writer.close()


async def test_shutdown_closes_idle_api_connections(server_factory: ServerFactory) -> None:
    server = await server_factory()
    reader, writer = await connect(server)
    writer.write(post("/api/info", b"{}", server.api_key))
    status, _, _ = await read_response(reader)
    assert status == 200
    assert await server.stop() == 0
    assert await asyncio.wait_for(reader.read(), 10) == b"", "the idle keep-alive connection was closed"
    writer.close()


async def test_transport_error_mode_from_the_config_and_from_the_header(server_factory: ServerFactory) -> None:
    transport_mode = await server_factory({"http_api": {"error_mode": "transport"}})
    reader, writer = await connect(transport_mode)
    writer.write(post("/api/publish", b"{}", transport_mode.api_key)
                 + post("/api/publish", b'{"channel":"nosuchns:x","data":1}', transport_mode.api_key))
    status, headers, body = await read_response(reader)
    assert (status, json.loads(body)["code"]) == (400, 107)
    assert "server" not in headers, "the fast path answered"
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["code"]) == (404, 102)
    writer.close()

    default_mode = await server_factory()
    reader, writer = await connect(default_mode)
    writer.write(post("/api/publish", b"{}", default_mode.api_key)
                 + post("/api/publish", b"{}", default_mode.api_key, extra="X-Centrifugo-Error-Mode: transport\r\n"))
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)) == (200, {"error": {"code": 107, "message": "bad request"}})
    status, headers, body = await read_response(reader)
    assert (status, json.loads(body)["code"]) == (400, 107)
    assert "server" not in headers
    writer.close()
