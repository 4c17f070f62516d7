"""Real Redis servers for the tests, run from the ``redis-server`` binary on free loopback ports.

* ``RedisStandalone(workdir, port=None, settings=None)``: one plain Redis; ``start()`` / ``stop()`` /
  ``kill()``, ``.port``, ``.url``, ``.address``, ``client()``.
* ``RedisCluster(workdir, ports=None, replicas=1, node_timeout_ms=2000, settings=None)``: a Redis Cluster (6
  nodes, 3 masters with one replica each by default) created with ``redis-cli --cluster create``; ``.seeds``, ``.url``,
  ``master_for_key()``, ``kill_master_for_key()``, ``restart_node()``, ``wait_healthy()`` for failover tests.
* ``RedisClusterFactory``: the type of the ``redis_cluster_factory`` fixture.
* ``ensure_redis_installed()``: a clear error naming the fix when the binaries are missing or too old.

Nothing persists (``save ""``, ``appendonly no``) unless ``settings`` (extra redis.conf options) say so; every
file lives in the given workdir. Ports are picked by the OS unless given; a server that loses a race for its
port is restarted on another one. Everything here is
synchronous: the servers are plain subprocesses, so session-scoped fixtures can share them across event loops.
Servers still running at interpreter exit are killed.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
MIN_VERSION = (7, 0)  # sharded pub/sub, cluster-port, cluster-allow-pubsubshard-when-down, SHUTDOWN NOW

INSTALL_HINT = (
    "Fugato's Redis tests run real servers from the redis-server and redis-cli binaries (Redis >= 7). "
    "Install them, e.g. `sudo apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` (macOS), "
    "or run tests/run.sh, which installs them when it can."
)

_live: set[_Node] = set()  # started and not yet stopped; killed at exit if a fixture never got to stop them


class RedisNotInstalledError(RuntimeError):
    pass


class RedisStartError(RuntimeError):
    pass


def ensure_redis_installed(min_version: tuple[int, int] = MIN_VERSION) -> None:
    """Raise ``RedisNotInstalledError`` (with the fix) unless redis-server and redis-cli >= ``min_version``
    are on PATH."""
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if missing:
        raise RedisNotInstalledError(f"{' and '.join(missing)} not found on PATH. {INSTALL_HINT}")
    out = subprocess.run(["redis-server", "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    if match is None or (int(match[1]), int(match[2])) < min_version:
        found = match[0] if match else repr(out.strip())
        raise RedisNotInstalledError(f"redis-server {found} is too old (need >= {min_version[0]}.{min_version[1]}). "
                                     f"{INSTALL_HINT}")


def free_port(exclude: Iterable[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (not in ``exclude``)."""
    excluded = set(exclude)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if port not in excluded:
            return port


def client(port: int, *, timeout: float = 2.0, **kwargs: Any) -> redis.Redis:
    """A redis-py client for a local server that fails fast (no retries) and decodes responses to ``str``.
    Use it as a context manager (or ``close()`` it)."""
    return redis.Redis(host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), decode_responses=True, **kwargs)


def _query(port: int, *args: Any, timeout: float = 2.0) -> Any:
    with client(port, timeout=timeout) as r:
        return r.execute_command(*args)


def _try_query(port: int, *args: Any, timeout: float = 2.0) -> Any:
    """``_query`` returning None instead of raising when the server is down, busy or refuses."""
    try:
        return _query(port, *args, timeout=timeout)
    except (redis.RedisError, OSError):
        return None


def _cluster_info(port: int) -> dict[str, str] | None:
    """``CLUSTER INFO`` as a dict, None if the node doesn't answer."""
    reply = _try_query(port, "CLUSTER", "INFO", timeout=1.0)
    if not isinstance(reply, str):
        return None
    return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)


def _replication_info(port: int) -> dict[str, Any] | None:
    """``INFO replication`` as a dict (numbers parsed), None if the node doesn't answer."""
    try:
        with client(port, timeout=1.0) as r:
            info: dict[str, Any] = r.info("replication")
            return info
    except (redis.RedisError, OSError):
        return None


class _Node:
    """One ``redis-server`` process: fixed command line, log appended to ``<workdir>/redis.log``."""

    def __init__(self, workdir: Path, port: int | None, settings: Mapping[str, str], *, cluster: bool = False,
                 reserved: set[int] | None = None) -> None:
        self.workdir = workdir
        self.settings = dict(settings)
        self.cluster = cluster
        self.auto_port = port is None
        self._reserved = reserved if reserved is not None else set()  # ports other nodes of a cluster hold
        self.port = port if port is not None else self._pick_port()
        self.bus_port = self._pick_port() if cluster else 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def _pick_port(self) -> int:
        port = free_port(self._reserved)
        self._reserved.add(port)
        return port

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        options = {
            "port": str(self.port),
            "bind": HOST,
            "dir": str(self.workdir),
            "daemonize": "no",
            "save": "",
            "appendonly": "no",
            "logfile": "",  # stdout, which goes to redis.log: startup errors land there too
            **({"cluster-port": str(self.bus_port)} if self.cluster else {}),
            **self.settings,
        }
        argv = ["redis-server"]
        for name, value in options.items():
            argv += [f"--{name}", value]
        return argv

    def launch(self) -> None:
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir)
        _live.add(self)

    def wait_ready(self, timeout: float = 10.0, *, repick: bool = True) -> None:
        """Wait until PING answers. If another process took a port this node picked itself (``repick``),
        relaunch on another free one."""
        for attempt in range(5):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.running:
                    break
                if _try_query(self.port, "PING", timeout=0.5) is True:
                    return
                time.sleep(0.05)
            if self.running:
                self.kill()
                raise RedisStartError(f"redis-server on port {self.port} did not answer PING within {timeout:.0f} s "
                                      f"(log {self.log_path}):\n{self.log_tail()}")
            taken = self._taken_ports() if repick and attempt < 4 else set()
            if self.port in taken and self.auto_port:
                self.port = self._pick_port()
            elif self.bus_port in taken:
                self.bus_port = self._pick_port()
            else:
                raise RedisStartError(f"redis-server on port {self.port} exited with code {self.proc_returncode} "
                                      f"(log {self.log_path}):\n{self.log_tail()}")
            self.launch()

    @property
    def proc_returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _taken_ports(self) -> set[int]:
        """Ports the last launch failed to bind ("Could not create server TCP listening socket 127.0.0.1:P:
        bind: Address already in use")."""
        return {int(port) for port in re.findall(r":(\d+): bind: Address already in use", self._log_since_launch())}

    def _log_since_launch(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def request_shutdown(self) -> None:
        """Ask the server to exit without saving (and without waiting for lagging replicas)."""
        if not self.running:
            return
        with contextlib.suppress(redis.RedisError, OSError), client(self.port, timeout=2.0) as r:
            r.execute_command("SHUTDOWN", "NOSAVE", "NOW")

    def wait_stopped(self, timeout: float = 5.0) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        _live.discard(self)

    def stop(self, timeout: float = 5.0) -> None:
        self.request_shutdown()
        self.wait_stopped(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
        _live.discard(self)


@atexit.register
def _kill_leftovers() -> None:
    for node in list(_live):
        node.kill()


class RedisStandalone:
    """A single Redis server on ``127.0.0.1:port`` (a free port unless given), files in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None, settings: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self._node = _Node(self.workdir, port, settings or {})

    @property
    def port(self) -> int:
        return self._node.port

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}"

    @property
    def running(self) -> bool:
        return self._node.running

    @property
    def pid(self) -> int | None:
        return None if self._node.proc is None else self._node.proc.pid

    def start(self, timeout: float = 10.0) -> Self:
        ensure_redis_installed()
        self._node.launch()
        self._node.wait_ready(timeout)
        return self

    def stop(self) -> None:
        """SHUTDOWN NOSAVE, then SIGKILL if it has not exited within 5 s. Idempotent."""
        self._node.stop()

    def kill(self) -> None:
        """SIGKILL (no shutdown: what is not on disk is gone); ``start()`` brings it back on the same port."""
        self._node.kill()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client (``decode_responses=True``, no retries) for this server."""
        return client(self.port, **kwargs)

    def log_tail(self, lines: int = 30) -> str:
        return self._node.log_tail(lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisStandalone({self.address}, running={self.running})"


class RedisClusterFactory(Protocol):
    """The ``redis_cluster_factory`` fixture: starts a fresh, private cluster (stopped at test teardown)."""

    def __call__(self, *, ports: list[int] | None = None, replicas: int = 1,
                 node_timeout_ms: int = 2000) -> RedisCluster: ...


SlotMap = dict[tuple[int, int], tuple[int, tuple[int, ...]]]  # (first, last) slot -> (master port, replica ports)


class RedisCluster:
    """A Redis Cluster of ``len(ports)`` nodes (6 free ports unless given) with ``replicas`` replicas per
    master, each node in ``workdir/node<i>``. Failover-friendly settings: ``cluster-node-timeout``
    ``node_timeout_ms``, a replica may always take over (``cluster-replica-validity-factor 0``), reads and
    sharded pub/sub keep working on the healthy part of a partly-down cluster."""

    def __init__(self, workdir: Path, ports: list[int] | None = None, replicas: int = 1,
                 node_timeout_ms: int = 2000, settings: Mapping[str, str] | None = None) -> None:
        count = len(ports) if ports is not None else 6
        if replicas < 0 or count < 3 * (replicas + 1) or count % (replicas + 1):
            raise ValueError(f"{count} nodes cannot make >= 3 masters with {replicas} replica(s) each")
        self.workdir = Path(workdir)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        settings = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(node_timeout_ms),
            "cluster-require-full-coverage": "no",
            "cluster-allow-reads-when-down": "yes",
            "cluster-allow-pubsubshard-when-down": "yes",
            "cluster-replica-validity-factor": "0",
            "repl-diskless-sync-delay": "0",
            # Redis 7 leaves a replica out of CLUSTER SLOTS/SHARDS until its replication offset is non-zero,
            # and an idle master only moves the offset with its replica PINGs (every 10 s by default).
            "repl-ping-replica-period": "1",
            **(settings or {}),
        }
        reserved = set(ports or ())
        self._nodes = [
            _Node(self.workdir / f"node{i}", None if ports is None else ports[i], settings, cluster=True,
                  reserved=reserved)
            for i in range(count)
        ]

    # -- addresses -----------------------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self._nodes]

    @property
    def seeds(self) -> list[str]:
        return [f"{HOST}:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.seeds)

    def client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A plain (non-cluster) redis-py client for one node."""
        return client(port, **kwargs)

    def is_running(self, port: int) -> bool:
        return self._node(port).running

    def pid(self, port: int) -> int | None:
        proc = self._node(port).proc
        return None if proc is None else proc.pid

    def log_tail(self, port: int, lines: int = 30) -> str:
        return self._node(port).log_tail(lines)

    def _node(self, port: int) -> _Node:
        for node in self._nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster on port {port} (ports: {self.ports})")

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Start every node, create the cluster and wait until every node reports ``cluster_state:ok``, all
        nodes agree on who serves which of the 16384 slots and every replica is in sync with its master."""
        ensure_redis_installed()
        try:
            for node in self._nodes:
                node.launch()
            for node in self._nodes:
                node.wait_ready()
            create = subprocess.run(
                ["redis-cli", "--cluster", "create", *self.seeds, "--cluster-replicas", str(self.replicas),
                 "--cluster-yes"],
                check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            )
            (self.workdir / "create.log").write_text(create.stdout + create.stderr)
            if create.returncode != 0:
                raise RedisStartError(f"redis-cli --cluster create failed ({create.returncode}):\n"
                                      f"{create.stdout[-3000:]}{create.stderr[-2000:]}")
            self._wait(self._fully_formed, timeout, "cluster did not form")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SHUTDOWN NOSAVE NOW on every node, SIGKILL those still running after 5 s. Idempotent."""
        for node in self._nodes:
            node.request_shutdown()
        for node in self._nodes:
            node.wait_stopped()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisCluster({self.url})"

    # -- topology ------------------------------------------------------------------------------------------

    def _reachable(self) -> list[int]:
        return [node.port for node in self._nodes if node.running]

    def slot_map(self, port: int | None = None) -> SlotMap:
        """``CLUSTER SLOTS`` as seen by node ``port`` (the first running node by default)."""
        if port is None:
            port = self._any_port()
        return self._parse_slots(_query(port, "CLUSTER", "SLOTS"))

    @staticmethod
    def _parse_slots(reply: list[list[Any]]) -> SlotMap:
        return {(int(entry[0]), int(entry[1])): (int(entry[2][1]), tuple(sorted(int(n[1]) for n in entry[3:])))
                for entry in reply}

    def _any_port(self) -> int:
        for port in self._reachable():
            if _try_query(port, "PING", timeout=1.0) is True:
                return port
        raise RuntimeError(f"no node of the cluster answers (ports: {self.ports})")

    def key_slot(self, key: str) -> int:
        return int(_query(self._any_port(), "CLUSTER", "KEYSLOT", key))

    def master_for_slot(self, slot: int) -> int:
        """Port of the master serving ``slot`` according to a running node."""
        for (first, last), (master, _replicas) in self.slot_map().items():
            if first <= slot <= last:
                return master
        raise LookupError(f"slot {slot} is not served by any master")

    def master_for_key(self, key: str) -> int:
        """Port of the master serving ``key``'s slot (``CLUSTER KEYSLOT`` + ``CLUSTER SLOTS``)."""
        return self.master_for_slot(self.key_slot(key))

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots, in slot order."""
        return sorted({master for master, _replicas in self.slot_map().values()})

    def role(self, port: int) -> str:
        """``master``, ``slave`` (``ROLE``'s word for a replica), or ``down`` when the node doesn't answer."""
        reply = _try_query(port, "ROLE", timeout=1.0)
        return str(reply[0]) if reply else "down"

    # -- faults --------------------------------------------------------------------------------------------

    def kill_node(self, port: int) -> None:
        """SIGKILL one node (no goodbye to the cluster: it has to be detected as failed)."""
        self._node(port).kill()

    def kill_master_for_key(self, key: str) -> int:
        """SIGKILL the master serving ``key``'s slot; returns its port."""
        port = self.master_for_key(key)
        self.kill_node(port)
        return port

    def restart_node(self, port: int, timeout: float = 10.0) -> None:
        """Start a stopped/killed node again with the same options; it reloads its ``nodes.conf`` and rejoins
        (a master that was failed over comes back as a replica of its replacement). Waits for PING only."""
        node = self._node(port)
        node.launch()
        node.wait_ready(timeout, repick=False)

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Wait until every running node says ``cluster_state:ok``, they all agree on the slot map, and every
        slot is served by a running master (the state after a failover completes)."""
        self._wait(self._healthy, timeout, "cluster did not become healthy")

    def wait_replica_of(self, port: int, master: int, timeout: float = 15.0) -> None:
        """Wait until node ``port`` is a replica of ``master`` with its replication link up."""
        def synced() -> str | None:
            info = _replication_info(port)
            if not info:
                return "no answer"
            state = (info.get("role"), info.get("master_port"), info.get("master_link_status"))
            return None if state == ("slave", master, "up") else f"role/master_port/link = {state}"
        self._wait(synced, timeout, f"node {port} did not become an in-sync replica of {master}")

    # -- waiting -------------------------------------------------------------------------------------------

    def _wait(self, problem: Callable[[], str | None], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            issue = problem()
            if issue is None:
                return
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- node {node.port} ({node.log_path}):\n{node.log_tail(8)}" for node in self._nodes)
                raise TimeoutError(f"{what} within {timeout:.0f} s: {issue}\n{logs}")
            time.sleep(0.1)

    def _views(self, ports: list[int]) -> tuple[dict[int, SlotMap], str | None]:
        views: dict[int, SlotMap] = {}
        for port in ports:
            info = _cluster_info(port)
            if not info:
                return views, f"node {port} does not answer"
            if info.get("cluster_state") != "ok":
                return views, f"node {port}: cluster_state:{info.get('cluster_state')}"
            reply = _try_query(port, "CLUSTER", "SLOTS", timeout=1.0)
            if reply is None:
                return views, f"node {port}: CLUSTER SLOTS failed"
            views[port] = self._parse_slots(reply)
        return views, None

    @staticmethod
    def _coverage_problem(slots: SlotMap) -> str | None:
        covered = sum(last - first + 1 for first, last in slots)
        return None if covered == CLUSTER_SLOTS else f"{covered}/{CLUSTER_SLOTS} slots covered"

    def _fully_formed(self) -> str | None:
        views, issue = self._views(self.ports)
        if issue:
            return issue
        first = views[self.ports[0]]
        for port, view in views.items():
            if view != first:
                return f"nodes {self.ports[0]} and {port} disagree on the slot map"
        if issue := self._coverage_problem(first):
            return issue
        masters = {master for master, _replicas in first.values()}
        if len(masters) != len(self._nodes) // (self.replicas + 1):
            return f"{len(masters)} masters serve slots"
        attached = [port for _master, replicas in first.values() for port in replicas]
        if len(attached) != len(self._nodes) - len(masters):
            return f"{len(attached)} replicas attached"
        for port in attached:
            info = _replication_info(port)
            if not info or info.get("master_link_status") != "up":
                return f"replica {port} not in sync yet"
        return None

    def _healthy(self) -> str | None:
        running = self._reachable()
        if not running:
            return "no node is running"
        views, issue = self._views(running)
        if issue:
            return issue
        first = views[running[0]]
        for port, view in views.items():
            if {k: v[0] for k, v in view.items()} != {k: v[0] for k, v in first.items()}:
                return f"nodes {running[0]} and {port} disagree on slot masters"
        if issue := self._coverage_problem(first):
            return issue
        for master, _replicas in first.values():
            if master not in running:
                return f"slots still assigned to stopped node {master}"
        return None
