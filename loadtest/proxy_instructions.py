"""Instructions per client publish with and without the publish proxy, counted by valgrind's callgrind, so the
figures do not depend on how loaded the machine is.

    python -m loadtest.proxy_instructions [--tree DIR ...] [--clients 1 16] [--publications 320] [--profile]

In one process, with the memory engine: C connected clients (the real ``Client`` and WebSocket transport over
a fake asyncio transport that takes every write) each send their share of the publications, one publish frame
after another through ``Client.handle_data`` (the real command path), to a namespace with the publish proxy
and to one without. The proxy's backend is a small HTTP/1.1 server in a separate process (not counted), on
loopback, answering ``{"result":{}}`` with keep-alive. Only the publishing is counted (callgrind switched on
and off around it, as in ``fanout_instructions``); a warm-up round first opens the proxy's connections.
``--profile`` runs the proxied workload under cProfile instead (no valgrind) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import json
import os
import pstats
import re
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import jwt

# From the checkout under measurement: the workload runs with PYTHONPATH set to it.
from loadtest import fanout_instructions
from node.client import Client
from node.config_load import load
from node.models import RequestInfo
from node.proxy.http_client import HttpPool, render_headers
from node.server import build_node
from node.transports.websocket import WebSocketTransport

ROOT = Path(__file__).resolve().parents[1]
SECRET = "proxy-instructions-secret-0123456789"
BODY = b'{"result":{}}'
POOL = "pool"  # --channel: HttpPool.post alone, no client or command
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class _Backend(asyncio.Protocol):
    """The application backend: every POST (Content-Length framed) answered ``{"result":{}}``, kept alive."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = int(re.search(rb"content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            self.transport.write(ANSWER)


async def backend_main(sock: socket.socket) -> None:
    server = await asyncio.get_running_loop().create_server(_Backend, sock=sock)
    async with server:
        await server.serve_forever()


class _Raw(fanout_instructions._Raw):
    """The fan-out count's fake transport, waking the publisher waiting for its reply to be written (as a real
    client with one publish in flight would)."""

    def __init__(self) -> None:
        self.waiter: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def writelines(self, data: Any) -> None:
        self.write(b"")


def config_file(backend_port: int, directory: str) -> str:
    path = os.path.join(directory, "config.json")
    with open(path, "w") as f:
        json.dump({"client": {"token": {"hmac_secret_key": SECRET}},
                   "channel": {"proxy": {"publish": {"endpoint": f"http://127.0.0.1:{backend_port}/publish"}},
                               "namespaces": [{"name": "px", "publish_proxy_enabled": True},
                                              {"name": "plain", "allow_publish_for_client": True}]}}, f)
    return path


async def workload(config_path: str, channel: str, clients_n: int, publications: int, profile: bool) -> None:
    node: Any = build_node(load(config_path, {}, {}).config)
    await node.start()
    token = jwt.encode({"sub": "publisher"}, SECRET, algorithm="HS256")
    clients = []
    loop = asyncio.get_running_loop()
    for _ in range(clients_n):
        raw = _Raw()
        transport = WebSocketTransport(fanout_instructions._Ws(), raw)  # type: ignore[arg-type]
        client = Client(node, transport, RequestInfo(transport="websocket"))
        raw.waiter = loop.create_future()
        await client.handle_data(json.dumps({"id": 1, "connect": {"token": token}}).encode())
        await raw.waiter
        clients.append((client, raw))
    frames = [json.dumps({"id": i + 2, "publish": {"channel": channel, "data": {"text": "x" * 80, "n": i}}}).encode()
              for i in range(publications // clients_n)]

    async def publisher(client: Any, raw: _Raw, frames: list[bytes]) -> None:
        for frame in frames:
            raw.waiter = waiter = loop.create_future()
            if not await client.handle_data(frame):
                raise SystemExit("the client was closed")
            await waiter  # the reply written: the next publish (one in flight per connection)

    async def run(frames: list[bytes]) -> None:
        await asyncio.gather(*(publisher(c, raw, frames) for c, raw in clients))

    if channel == POOL:  # the HTTP round trip alone: the proxy's client posting a proxy-sized body
        run = pool_runner(config_path, clients_n, len(frames))
    await run(frames[:4])  # warm-up: the proxy's connections, first-call caches
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        await run(frames)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(60)
        return
    measure = fanout_instructions.toggles()
    measure.measure_start()
    await run(frames)
    measure.measure_stop()


def pool_runner(config_path: str, clients_n: int, per_client: int) -> Any:
    with open(config_path) as f:
        endpoint = json.load(f)["channel"]["proxy"]["publish"]["endpoint"]
    # The pool bounds its calls itself since the per-call timer went (an older tree's takes no timeout).
    bounded = "timeout" in inspect.signature(HttpPool).parameters
    options: dict[str, Any] = {"timeout": 1.0} if bounded else {}
    pool = HttpPool(endpoint, limit=256, **options)
    headers = render_headers({"Content-Type": "application/json"})
    body = json.dumps({"client": str(uuid.uuid4()), "transport": "websocket", "protocol": "json", "encoding": "json",
                       "user": "publisher", "data": {"text": "x" * 80, "n": 1}, "channel": "px:bench"},
                      separators=(",", ":")).encode()

    async def poster(n: int) -> None:
        for _ in range(n):
            status, _answer = await pool.post(body, headers)
            if status != 200:
                raise SystemExit(f"backend answered {status}")

    async def run(frames: list[bytes]) -> None:
        await asyncio.gather(*(poster(len(frames)) for _ in range(clients_n)))

    return run


def inner(args: argparse.Namespace) -> None:
    loop = asyncio.new_event_loop()
    # A clock that stands still: the writer's time-based choices would otherwise follow valgrind's slowdown.
    loop.time = lambda: 0.0  # type: ignore[method-assign]
    loop.run_until_complete(workload(args.config, args.channel, args.clients[0], args.publications, args.profile))
    loop.close()


def callgrind(tree: Path, config: str, channel: str, clients: int, publications: int) -> int:
    args = ["--inner", "--config", config, "--channel", channel, "--clients", str(clients), "--publications",
            str(publications)]
    return fanout_instructions.counted(__file__, args, tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", help="checkout(s) to measure (default: this one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16], help="publishing connections")
    parser.add_argument("--publications", type=int, default=320, help="a multiple of each --clients")
    parser.add_argument("--profile", action="store_true", help="cProfile the proxied publishes instead")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--channel", default="px:bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return 0
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    backend = subprocess.Popen([sys.executable, "-c", "import asyncio, socket, sys; "
                                "from loadtest.proxy_instructions import backend_main; "
                                "asyncio.run(backend_main(socket.socket(fileno=int(sys.argv[1]))))",
                                str(sock.fileno())], pass_fds=(sock.fileno(),), cwd=ROOT)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = config_file(sock.getsockname()[1], tmp)
            if args.profile:
                args.config = config
                inner(args)
                return 0
            for tree in args.tree or [ROOT]:
                for clients in args.clients:
                    counts = {ch: callgrind(tree.resolve(), config, ch, clients, args.publications)
                              for ch in ("plain:bench", "px:bench", POOL)}
                    plain, proxied, alone = (counts[ch] / args.publications for ch in ("plain:bench", "px:bench", POOL))
                    print(f"{tree}: {clients} client(s), {args.publications} publications: {plain:,.0f} "
                          f"instructions per publish without the proxy, {proxied:,.0f} through it "
                          f"(+{proxied - plain:,.0f}); the HTTP call alone (HttpPool.post): {alone:,.0f}", flush=True)
    finally:
        backend.terminate()
        backend.wait(5)
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
