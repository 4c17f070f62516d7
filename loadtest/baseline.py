"""This machine's ceiling for one write per delivery: a bare Python loop that sends a 150-byte message to each
of N loopback TCP connections (a reading process on the other side), in sends per CPU-second.

    python -m loadtest.baseline [N]
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import time


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        ep = select.epoll()
        by_fd = {}
        for s in socks:
            s.setblocking(False)
            ep.register(s.fileno(), select.EPOLLIN)
            by_fd[s.fileno()] = s
        end = time.monotonic() + 5
        while time.monotonic() < end:
            for fd, _ in ep.poll(0.1):
                with contextlib.suppress(BlockingIOError):
                    by_fd[fd].recv(1 << 16)
        os._exit(0)
    conns = [listener.accept()[0] for _ in range(n)]
    for c in conns:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * 150
    sends = 0
    cpu0, started = time.process_time(), time.monotonic()
    while time.monotonic() - started < 2:
        for c in conns:
            c.send(message)
            sends += 1
        time.sleep(0.002)
    cpu = time.process_time() - cpu0
    os.waitpid(child, 0)
    print(f"raw send loop ({n} connections, one send per delivery): {sends / cpu:,.0f} sends/CPU-s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
