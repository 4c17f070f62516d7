"""A real ``nats-server`` for the tests, with JetStream (``-js``) and its store in a temp dir, on a free
loopback port. ``stop()`` kills it; ``start()`` again reuses the port and the store, as a restarted server
would. Servers still running at interpreter exit are killed."""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from redis_servers import HOST, free_port

INSTALL_HINT = ("The NATS broker tests run a real nats-server (>= 2.9). Install it, e.g. "
                "`sudo apt-get install -y nats-server`, or run tests/run.sh, which installs it when it can.")

_live: set[NatsServer] = set()


def _binary() -> str:
    found = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if found is None:
        raise RuntimeError(f"nats-server not found. {INSTALL_HINT}")
    return found


class NatsServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.monitor_port = free_port({self.port})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "nats.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [_binary(), "-a", HOST, "-p", str(self.port), "-m", str(self.monitor_port),
                 "-js", "-sd", str(self.workdir / "store")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _live.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"nats-server exited: {(self.workdir / 'nats.log').read_text()[-2000:]}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server on port {self.port} not ready within {timeout} s")

    def connections(self) -> list[dict[str, Any]]:
        """The server's client connections (its /connz monitoring endpoint)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.monitor_port}/connz?limit=1000", timeout=5) as resp:
            conns: list[dict[str, Any]] = json.load(resp).get("connections") or []
            return conns

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        _live.discard(self)


@atexit.register
def _kill_all() -> None:
    for server in list(_live):
        server.stop()
