"""A real PostgreSQL for the tests: ``initdb`` into a temporary directory, ``postgres`` on a free loopback port.

* ``PostgresServer()``: ``start()`` / ``stop()`` / ``kill()``; ``.dsn``, ``.port``; ``execute(sql, params)``
  (autocommit, synchronous). ``start()`` after ``stop()`` runs the same cluster on the same port again.
* ``OUTBOX_DDL``: Centrifugo's outbox table and the LISTEN/NOTIFY trigger from its docs (table name formatted in).

initdb refuses to run as root, so as root the cluster belongs to ``nobody`` and the server runs as that user
(the directory is made under /tmp, which it can reach). Nothing is synced to disk (``fsync=off``): the data
only has to outlive a restart of the server, not of the machine. Servers still running at exit are killed.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import psycopg
from redis_servers import free_port

OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id BIGSERIAL PRIMARY KEY,
    method text NOT NULL,
    payload JSONB NOT NULL,
    partition INTEGER NOT NULL default 0,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL
);
CREATE OR REPLACE FUNCTION {table}_notify() RETURNS TRIGGER AS $$
BEGIN
    PERFORM pg_notify('{table}_change', NEW.partition::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER {table}_trigger AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_notify();
"""

LOCAL_PG: Final = "postgresql://postgres@127.0.0.1:5432/postgres"  # the development machine's trust server
MAP_TABLES: Final = ("stream", "state", "meta", "shard", "settings", "result")
MAP_FUNCTIONS: Final = ("publish", "remove", "publish_strict", "remove_strict", "apply", "epoch", "floor", "info",
                         "msgpack_len", "stream_size", "stream_ttl")

INSTALL_HINT = ("PostgreSQL's initdb/postgres were not found: run tests/setup/postgres.sh "
                "(Debian: apt-get install postgresql)")

_live: set[PostgresServer] = set()


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


class PostgresServer:
    def __init__(self) -> None:
        self.user = "nobody" if os.geteuid() == 0 else ""
        self.dir = Path(tempfile.mkdtemp(prefix="fugato-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings: dict[str, str] = {}  # more ``-c`` settings for the next start()
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run([_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                  check=True)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def enable_tls(self, cert_pem: str, key_pem: str) -> None:
        """Serve TLS (as well as plain connections) with this certificate from the next start()."""
        for name, text in (("server.crt", cert_pem), ("server.key", key_pem)):
            path = self.dir / name
            path.write_text(text)
            path.chmod(0o600)  # postgres refuses a key others can read
            if self.user:
                pw = pwd.getpwnam(self.user)
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self.settings.update(ssl="on", ssl_cert_file=str(self.dir / "server.crt"),
                             ssl_key_file=str(self.dir / "server.key"))

    def _run(self, argv: list[str], *, check: bool = False) -> subprocess.Popen[bytes]:
        log = (self.dir / "postgres.log").open("ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                user=self.user or None, cwd=self.dir)
        log.close()
        if check and proc.wait(60) != 0:
            raise RuntimeError(f"{argv[0]} failed:\n{self.log_tail()}")
        return proc

    def log_tail(self, lines: int = 40) -> str:
        path = self.dir / "postgres.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self, timeout: float = 30.0) -> PostgresServer:
        self.proc = self._run([_binary("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
                               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200",
                               "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                               *(arg for k, v in self.settings.items() for arg in ("-c", f"{k}={v}"))])
        _live.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=1):
                    return self
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"postgres did not accept connections within {timeout}s:\n{self.log_tail()}")

    def execute(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query.encode(), params)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are closed by the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            self.proc.wait(30)
        _live.discard(self)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        _live.discard(self)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def drop_pg_schema(dsn: str, base: str) -> None:
    """Drop a PostgreSQL map broker's tables and functions (``{base}_map_*``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in MAP_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {base}_map_{table} CASCADE".encode())
        for fn in MAP_FUNCTIONS:
            conn.execute(f"DROP FUNCTION IF EXISTS {base}_map_{fn} CASCADE".encode())


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.kill()
