"""The subscriber swarm of the benchmark, in its own process: plain non-blocking sockets under one epoll, read
lazily (after each round of reads it sleeps ``lazy_ms``), so that deliveries pile up in the kernel and the swarm
costs a fraction of the server's CPU. It counts messages (by a marker), samples publish→receive latencies from
the ``"t":<ns>`` field of the newest message in each read, and answers the parent's commands over a pipe."""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

MARK = b'"t":'


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload  # a zero mask key leaves the payload unchanged


class Conn:
    __slots__ = ("buf", "index", "sock")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock, self.index, self.buf = sock, index, bytearray()


def _handshake(host: str, port: int, path: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head[:80].decode(errors="replace"))
    sock.setblocking(False)
    return sock, head.split(b"\r\n\r\n", 1)[1]  # socket.io sends its open packet right away


def swarm_main(pipe: Connection, params: dict[str, Any]) -> None:
    kind, n, channels = params["kind"], params["n"], params["channels"]
    tokens: list[str] = params["tokens"]
    # Map subscribers walk the map phases: one STATE page (id 2), then STREAM from its position (id 3) to LIVE.
    map_sub = bool(params.get("map"))
    ready_id = b'"id":3' if map_sub else b'"id":2'
    lazy = params["lazy_ms"] / 1000
    marker = b'"pub":' if kind == "fugato" else b'42["msg"'
    path = "/connection/websocket" if kind == "fugato" else "/socket.io/?EIO=4&transport=websocket"
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    ready = 0
    messages = 0
    samples: list[int] = []
    close_codes: dict[int, int] = {}
    try:
        for i in range(n):
            sock, early = _handshake(params["host"], params["port"], path)
            conn = Conn(sock, i)
            conn.buf += early
            conns[sock.fileno()] = conn
            ep.register(sock.fileno(), select.EPOLLIN)
            if kind == "fugato":
                channel = channels[i % len(channels)]
                sub: dict[str, Any] = {"channel": channel, "type": 1, "phase": 2} if map_sub else {"channel": channel}
                sock.send(_frame(json.dumps({"id": 1, "connect": {"token": tokens[i]}}).encode() + b"\n"
                                 + json.dumps({"id": 2, "subscribe": sub}).encode()))
    except OSError as e:
        pipe.send({"error": f"connect failed after {len(conns)} connections: {e}"})
        return
    pipe.send({"connected": len(conns)})

    def on_text(conn: Conn, payload: bytes) -> None:
        nonlocal ready
        sock = conn.sock
        if kind == "fugato":
            if payload.startswith(b"{}") or b"\n{}" in payload:
                sock.send(_frame(b"{}"))  # pong
            if map_sub and b'"id":2' in payload:
                for line in payload.split(b"\n"):
                    if line.startswith(b'{"id":2,'):
                        page = json.loads(line)["subscribe"]
                        sub = {"channel": channels[conn.index % len(channels)], "type": 1, "phase": 1,
                               "offset": page.get("offset", 0), "epoch": page["epoch"]}
                        sock.send(_frame(json.dumps({"id": 3, "subscribe": sub}).encode()))
            if ready_id in payload:
                ready += 1
        elif payload.startswith(b"0{"):
            sock.send(_frame(b"40"))
        elif payload.startswith(b"40"):
            room = channels[conn.index % len(channels)]
            sock.send(_frame(b'42["join",' + json.dumps(room).encode() + b"]"))
        elif payload.startswith(b'42["joined"'):
            ready += 1
        elif payload == b"2":
            sock.send(_frame(b"3"))

    def process(conn: Conn, data: bytes) -> None:
        nonlocal messages
        buf = conn.buf
        buf += data
        pos = 0
        newest = -1
        while len(buf) - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            head = 2
            if b1 == 126:
                if len(buf) - pos < 4:
                    break
                b1 = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif b1 == 127:
                if len(buf) - pos < 10:
                    break
                b1 = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            end = pos + head + b1
            if end > len(buf):
                break
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                found = buf.count(marker, pos + head, end)
                if found:
                    messages += found
                    newest = buf.rfind(MARK, pos + head, end)
                else:
                    on_text(conn, bytes(buf[pos + head:end]))
            elif opcode == 8:
                code = int.from_bytes(buf[pos + head:pos + head + 2], "big") if b1 >= 2 else 1005
                close_codes[code] = close_codes.get(code, 0) + 1
            pos = end
        if newest >= 0:
            digits = newest + 4
            stop = digits
            while stop < len(buf) and 48 <= buf[stop] <= 57:
                stop += 1
            samples.append(time.time_ns() - int(buf[digits:stop]))
        del buf[:pos]

    for conn in conns.values():
        if conn.buf:
            pending, conn.buf = bytes(conn.buf), bytearray()
            process(conn, pending)

    running = True
    while running:
        while pipe.poll():
            cmd = pipe.recv()
            if cmd == "reset":
                messages = 0
                samples.clear()
                pipe.send("ok")
            elif cmd == "report":
                pipe.send({"ready": ready, "messages": messages, "samples": samples[:], "closed": close_codes})
            elif cmd == "stop":
                running = False
        events = ep.poll(0.01)
        for fd, _ in events:
            conn = conns[fd]
            try:
                data = conn.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                ep.unregister(fd)
                continue
            process(conn, data)
        if events and lazy:
            time.sleep(lazy)
    for conn in conns.values():
        conn.sock.close()
