"""Fan-out benchmark against a running Fugato (or a python-socketio peer), bounded in time.

    python -m loadtest.bench --spawn [--scenario fanout|channels|idle|storm] [options]

``--spawn`` starts the server itself on a free loopback port (memory engine, one worker) and stops it at the
end; without it, point ``--url``/``--api-key``/``--secret``/``--server-pid`` at a running server. ``--peer
socketio`` runs the same fan-out against python-socketio instead (always spawned). Prints deliveries/s,
deliveries per server CPU-second (from /proc), the load generator's own CPU, publish→receive latency
percentiles, lost messages and server RSS per connection.

Scenarios: ``fanout`` (one channel, ``--subscribers`` N), ``channels`` (``--channels`` K with one subscriber
each), ``idle`` (memory per connection), ``storm`` (connections/s, each with a JWT connect).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import multiprocessing
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from loadtest.engines import compare_engines
from loadtest.swarm import swarm_main

SECRET = "fugato-bench-secret-0123456789abcdef"
API_KEY = "fugato-bench-api-key"
TICKS = os.sysconf("SC_CLK_TCK")
PAYLOAD_PAD = "x" * 80


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_split(pids: int | list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes: Python's share and the kernel's (mostly send())."""
    user = system = 0.0
    for pid in [pids] if isinstance(pids, int) else pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11]) / TICKS
        system += int(fields[12]) / TICKS
    return user, system


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) ticks of every CPU of the machine, from /proc/stat: whether a run was bound by the
    machine (server, load generator and Redis together) rather than by the server."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7]
    total = sum(fields)
    return total - idle - steal, steal, total


def cpu_seconds(pids: int | list[int]) -> float:
    return sum(cpu_split(pids))


def rss_kb(pids: int | list[int]) -> int:
    total = 0
    for pid in [pids] if isinstance(pids, int) else pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Target:
    kind: str  # "fugato" | "socketio"
    host: str
    port: int
    pid: int | list[int]  # the server process, or every worker of a multi-worker server
    api_key: str = API_KEY
    secret: str = SECRET

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (the workers under supervisord), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Spawned:
    """A server process started for this run (stopped at exit). ``redis_url`` switches Fugato to the Redis
    engine; ``engine`` is merged into its config (e.g. a NATS broker); ``workers`` > 1 runs that many workers
    under supervisord on the one port."""

    def __init__(self, kind: str, write_delay_ms: float = 0.0, *, redis_url: str = "",
                 engine: dict[str, Any] | None = None, workers: int = 1,
                 channel: dict[str, Any] | None = None, source: str = "") -> None:
        """``source``: run the server from that checkout of Fugato instead of the installed one (to compare
        two versions in one run)."""
        self.kind = kind
        self.port = free_port()
        self.workers = workers
        self.dir = tempfile.TemporaryDirectory(prefix="fugato-bench-")
        if kind == "fugato":
            config: dict[str, Any] = {
                "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["*"],
                           "channel_limit": 100000, "write_delay": f"{write_delay_ms}ms"},
                "http_api": {"key": API_KEY}, "log": {"level": "warn"},
                "channel": {"without_namespace": {"allow_subscribe_for_client": True, **(channel or {})}}}
            if redis_url:
                config["engine"] = {"type": "redis", "redis": {"address": [redis_url]}}
            config.update(engine or {})
            path = Path(self.dir.name) / "config.json"
            path.write_text(json.dumps(config))
            cmd = [sys.executable, "-m", "node", "serve", "--config", str(path), "--port", str(self.port),
                   "--host", "127.0.0.1", "--workers", str(workers)]
        else:
            cmd = [sys.executable, "-m", "loadtest.socketio_peer", str(self.port)]
        env = {**os.environ, "PYTHONPATH": source} if source else None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     cwd=source or None)

    def server_pids(self) -> int | list[int]:
        """The processes that serve clients: the server itself, or its workers (not supervisord)."""
        if self.workers == 1:
            return self.proc.pid
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pids = [p for p in descendants(self.proc.pid) if "--worker-index" in _cmdline(p)]
            if len(pids) == self.workers:
                return pids
            time.sleep(0.1)
        raise RuntimeError(f"expected {self.workers} workers")

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # the process offers nothing to wait on but its port
        raise RuntimeError(f"{self.kind} server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


# --- the subscriber swarm (a separate process) -------------------------------------------------------------


class Swarm:
    """Subscribers in their own process (``loadtest.swarm``), driven over a pipe."""

    def __init__(self, target: Target, n: int, channels: list[str], lazy_ms: float, *, map_sub: bool = False) -> None:
        """``map_sub``: subscribe as map subscribers (type 1, through the STATE and STREAM phases)."""
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        tokens = [jwt.encode({"sub": f"u{i}"}, target.secret, algorithm="HS256") for i in range(n)]
        params = {"kind": target.kind, "host": target.host, "port": target.port, "n": n, "channels": channels,
                  "tokens": tokens, "lazy_ms": lazy_ms, "map": map_sub}
        self.proc = ctx.Process(target=swarm_main, args=(child, params), daemon=True)
        self.n = n

    async def start(self) -> float:
        """Connect everyone; returns the seconds it took until all were subscribed."""
        started = time.monotonic()
        self.proc.start()
        first = await asyncio.to_thread(self.pipe.recv)
        if "error" in first:
            raise RuntimeError(first["error"])
        await self._wait_ready()
        return time.monotonic() - started

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while (await self.report())["ready"] < self.n:
            if time.monotonic() > deadline:
                raise RuntimeError("subscribers did not all subscribe in time")
            await asyncio.sleep(0.05)

    async def report(self) -> dict[str, Any]:
        self.pipe.send("report")
        result: dict[str, Any] = await asyncio.to_thread(self.pipe.recv)
        return result

    async def reset(self) -> None:
        self.pipe.send("reset")
        await asyncio.to_thread(self.pipe.recv)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc.pid else 0.0

    def stop(self) -> None:
        if self.proc.is_alive():
            self.pipe.send("stop")
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def build_cswarm() -> str | None:
    """Compile loadtest/cswarm.c once (cached by content); None without a C compiler."""
    source = Path(__file__).with_name("cswarm.c")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not source.exists():
        return None
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = Path(tempfile.gettempdir()) / f"fugato-cswarm-{digest}"
    if not binary.exists():
        subprocess.run([cc, "-O2", "-o", str(binary), str(source)], check=True)
    return str(binary)


class CSwarm(Swarm):
    """The same swarm in C (``loadtest/cswarm.c``): a small fraction of the Python swarm's CPU per delivery."""

    def __init__(self, binary: str, target: Target, n: int, channels: list[str], lazy_ms: float) -> None:
        self.binary, self.target, self.n, self.lazy_ms = binary, target, n, lazy_ms
        self.channels = channels
        self.proc_c: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        started = time.monotonic()
        t = self.target
        self.proc_c = await asyncio.create_subprocess_exec(
            self.binary, t.host, str(t.port), str(self.n), t.kind, str(int(self.lazy_ms * 1000)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26)
        assert self.proc_c.stdin is not None
        lines = []
        for i in range(self.n):
            ch = self.channels[i % len(self.channels)]
            if t.kind == "fugato":
                token = jwt.encode({"sub": f"u{i}"}, t.secret, algorithm="HS256")
                lines.append(json.dumps({"id": 1, "connect": {"token": token}}) + "\\n"
                             + json.dumps({"id": 2, "subscribe": {"channel": ch}}))
            else:
                lines.append(ch)
        self.proc_c.stdin.write(("\n".join(lines) + "\n").encode())
        await self.proc_c.stdin.drain()
        first = json.loads(await self._line())
        if "error" in first:
            raise RuntimeError(first["error"])
        await self._wait_ready()
        return time.monotonic() - started

    async def _line(self) -> bytes:
        assert self.proc_c is not None and self.proc_c.stdout is not None
        return await self.proc_c.stdout.readline()

    async def _ask(self, command: str) -> Any:
        assert self.proc_c is not None and self.proc_c.stdin is not None
        self.proc_c.stdin.write(command.encode() + b"\n")
        await self.proc_c.stdin.drain()
        return json.loads(await self._line())

    async def report(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._ask("report")
        return result

    async def reset(self) -> None:
        await self._ask("reset")

    def cpu(self) -> float:
        return cpu_seconds(self.proc_c.pid) if self.proc_c is not None else 0.0

    def stop(self) -> None:
        if self.proc_c is not None and self.proc_c.returncode is None:
            self.proc_c.kill()


def make_swarm(args: argparse.Namespace, target: Target, n: int, channels: list[str], lazy_ms: float) -> Swarm:
    binary = build_cswarm() if args.swarm in ("auto", "c") else None
    if args.swarm == "c" and binary is None:
        raise RuntimeError("--swarm c needs a C compiler (cc)")
    return CSwarm(binary, target, n, channels, lazy_ms) if binary else Swarm(target, n, channels, lazy_ms)


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client for the publishers: a request is one write and a response a few
    reads, ~10x less CPU than aiohttp's client, so the publishers (which share a core with the swarm) issue
    their requests as fast as the server answers instead of being the bottleneck."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            path.encode(), self.host.encode(), len(body), self.head, body))
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def publish_loop(target: Target, channels: list[str], publishers: int, rate: float, duration: float,
                       stagger: bool = False) -> int:
    """Publish for ``duration`` seconds from ``publishers`` concurrent HTTP connections; returns how many.
    The publishers start together and so publish in bursts of ``publishers``; ``stagger`` spreads their starts
    over one interval instead, so that publications arrive evenly at ``rate``."""
    sent = 0
    stop_at = time.monotonic() + duration
    interval = publishers / rate if rate > 0 else 0.0
    rr = itertools.cycle(channels)
    headers = {"X-API-Key": target.api_key, "Content-Type": "application/json"}
    path = "/api/publish" if target.kind == "fugato" else "/publish"

    async def one(i: int) -> None:
        nonlocal sent
        http = RawHttp(target.host, target.port, headers)
        next_at = time.monotonic()
        if stagger and interval:
            next_at += interval * i / publishers
            await asyncio.sleep(next_at - time.monotonic())
        try:
            while time.monotonic() < stop_at:
                ch = next(rr)
                data = {"t": time.time_ns(), "p": PAYLOAD_PAD}
                body = {"channel": ch, "data": data} if target.kind == "fugato" else {"room": ch, "data": data}
                status = await http.post(path, json.dumps(body).encode())
                if status != 200:
                    raise RuntimeError(f"publish failed: HTTP {status}")
                sent += 1
                if interval:
                    next_at += interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
        finally:
            http.close()

    await asyncio.gather(*(one(i) for i in range(publishers)))
    return sent


def percentile(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6


async def drain(swarm: Swarm, expected: int, timeout: float) -> dict[str, Any]:
    """The swarm's report once it has received ``expected`` messages, or at ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (report := await swarm.report())["messages"] < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # the swarm is another process: it can only be asked
    return report


async def run_fanout(target: Target, args: argparse.Namespace, subscribers: int, channels: int) -> dict[str, Any]:
    names = [f"bench{i}" for i in range(channels)]
    rss_before = rss_kb(target.pid)
    swarm = make_swarm(args, target, subscribers, names, args.lazy_ms)
    try:
        await swarm.start()
        rss_after = rss_kb(target.pid)
        await swarm.reset()
        machine0 = machine_ticks()
        split0, swarm_cpu0, own_cpu0, t0 = cpu_split(target.pid), swarm.cpu(), own_cpu(), time.monotonic()
        sent = await publish_loop(target, names, args.publishers, args.rate, args.duration)
        expected = sent * subscribers // channels
        report = await drain(swarm, expected, 10.0)
        elapsed = time.monotonic() - t0
        split1 = cpu_split(target.pid)
        machine1 = machine_ticks()
        server_user, server_sys = split1[0] - split0[0], split1[1] - split0[1]
        server_cpu = server_user + server_sys
        swarm_cpu, publisher_cpu = swarm.cpu() - swarm_cpu0, own_cpu() - own_cpu0
    finally:
        swarm.stop()
    got, samples = report["messages"], report["samples"]
    return {
        "publications": sent, "deliveries": got, "lost": expected - got, "seconds": elapsed,
        "deliveries_per_s": got / elapsed, "server_cpu_s": server_cpu,
        "server_user_share": server_user / server_cpu if server_cpu else float("nan"),
        "deliveries_per_server_cpu_s": got / server_cpu if server_cpu else float("nan"),
        "subscriber_swarm_cpu_s": swarm_cpu, "publisher_cpu_s": publisher_cpu,
        "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99), "max_ms": percentile(samples, 100),
        "rss_kb_per_conn": (rss_after - rss_before) / subscribers,
        "machine_cpu_busy": (machine1[0] - machine0[0]) / max(1, machine1[2] - machine0[2]),
        "machine_cpu_steal": (machine1[1] - machine0[1]) / max(1, machine1[2] - machine0[2]),
    }


async def run_idle(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    rss_before = rss_kb(target.pid)
    swarm = make_swarm(args, target, args.subscribers, ["idle0", "idle1"], args.lazy_ms)
    try:
        await swarm.start()
        await asyncio.sleep(2)  # let the server settle (allocations, first timers)
        rss_after = rss_kb(target.pid)
        cpu0 = cpu_seconds(target.pid)
        await asyncio.sleep(args.duration)
        idle_cpu = cpu_seconds(target.pid) - cpu0
    finally:
        swarm.stop()
    return {"connections": args.subscribers, "rss_kb_per_conn": (rss_after - rss_before) / args.subscribers,
            "server_cpu_per_s": idle_cpu / args.duration}


async def run_storm(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    swarm = make_swarm(args, target, args.subscribers, [f"storm{i}" for i in range(args.subscribers)], 0)
    cpu0 = cpu_seconds(target.pid)
    try:
        seconds = await swarm.start()
    finally:
        swarm.stop()
    cpu = cpu_seconds(target.pid) - cpu0
    return {"connections": args.subscribers, "connections_per_s": args.subscribers / seconds,
            "connections_per_server_cpu_s": args.subscribers / cpu if cpu else float("nan")}


def report(title: str, result: dict[str, Any]) -> None:
    print(title)
    for key, value in result.items():
        print(f"  {key:28s} {value:,.3f}" if isinstance(value, float) else f"  {key:28s} {value:,}")


def pin_cpus(server_pid: int | None) -> str:
    """Put a spawned server alone on the first CPU and this process (and the swarm it starts) on the others, so
    the load generator never steals the server's core; returns what was done, for the report."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    os.sched_setaffinity(0, set(cpus[1:]))
    if server_pid is None:
        return f"load generator on CPUs {cpus[1:]}"
    os.sched_setaffinity(server_pid, {cpus[0]})
    return f"server on CPU {cpus[0]}, load generator on CPUs {cpus[1:]}"


def start_redis_cluster(workdir: str) -> Any:
    """A private 3-master Redis Cluster from the redis-server binary, for the Redis engine runs. It reuses the
    test suite's launcher (tests/redis_servers.py), which is not an installed package, hence the path."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from redis_servers import RedisCluster, ensure_redis_installed, free_port  # noqa: PLC0415

    ensure_redis_installed()
    ports: list[int] = []
    for _ in range(3):
        ports.append(free_port(ports))
    return RedisCluster(Path(workdir), ports=ports, replicas=0).start()


def start_redis(workdir: str) -> Any:
    """A private standalone Redis for the Redis engine runs (the test suite's launcher, as above)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from redis_servers import RedisStandalone  # noqa: PLC0415

    return RedisStandalone(Path(workdir) / "standalone").start()


async def run_one(kind: str, workers: int, args: argparse.Namespace, engine: dict[str, Any]) -> dict[str, Any]:
    all_cpus = os.sched_getaffinity(0)
    spawned = Spawned(kind, args.write_delay_ms, engine=engine, workers=workers) \
        if args.spawn or kind == "socketio" else None
    try:
        if spawned is not None:
            await spawned.wait_ready()
            target = Target(kind, "127.0.0.1", spawned.port, spawned.server_pids())
        else:
            url = args.url.split("://", 1)[1].rstrip("/")
            host, port = url.rsplit(":", 1)
            pids = [int(p) for p in args.server_pid.split(",")]
            target = Target(kind, host, int(port), pids, args.api_key, args.secret)
        if not args.no_pin and workers == 1:  # several workers share every CPU with the load generator
            print(pin_cpus(spawned.proc.pid if spawned is not None else None))
        if args.scenario == "fanout":
            return await run_fanout(target, args, args.subscribers, 1)
        if args.scenario == "channels":
            return await run_fanout(target, args, args.channels, args.channels)
        if args.scenario == "idle":
            return await run_idle(target, args)
        return await run_storm(target, args)
    finally:
        if spawned is not None:
            spawned.stop()
        os.sched_setaffinity(0, all_cpus)


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit()
    worker_counts = [int(w) for w in str(args.workers).split(",")]
    if args.engine == "memory" and worker_counts != [1]:
        raise SystemExit("--workers above 1 needs --engine redis or redis_cluster (the memory engine serves one "
                         "process)")
    if args.engine == "nats":
        return await compare_engines(args, worker_counts[0], run_one, report)
    runs = [("fugato", w) for w in worker_counts] + ([("socketio", 1)] if args.peer == "socketio" else [])
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fugato-bench-redis-") as redis_dir:
        cluster = start_redis_cluster(redis_dir) if args.engine == "redis_cluster" and args.spawn else None
        standalone = start_redis(redis_dir) if args.engine == "redis" and args.spawn else None
        redis = cluster or standalone
        try:
            for kind, workers in runs:
                engine_cfg = {"engine": {"type": "redis", "redis": {"address": [redis.url]}}} if redis else {}
                result = await run_one(kind, workers, args, engine_cfg)
                name = kind if len(worker_counts) == 1 or kind != "fugato" else f"fugato-{workers}w"
                results[name] = result
                engine = f", {args.engine} engine, {workers} worker(s)" if kind == "fugato" else ""
                report(f"{kind}: {args.scenario}, "
                       f"{args.subscribers if args.scenario != 'channels' else args.channels} subscribers, "
                       f"{args.publishers} publishers, rate {args.rate or 'max'}, {args.duration}s{engine}", result)
        finally:
            if redis is not None:
                redis.stop()
    if len(worker_counts) > 1 and all("deliveries_per_s" in results[f"fugato-{w}w"] for w in worker_counts):
        first = results[f"fugato-{worker_counts[0]}w"]
        for w in worker_counts[1:]:
            result = results[f"fugato-{w}w"]
            print(f"{w} workers / {worker_counts[0]}: {result['deliveries_per_s'] / first['deliveries_per_s']:.2f}x "
                  f"deliveries/s, {result['deliveries_per_server_cpu_s'] / first['deliveries_per_server_cpu_s']:.2f}x "
                  "deliveries per server CPU-second (the CPU-efficiency form of scaling: 1.0 = no cost for the "
                  "extra workers)")
        return 0 if all(r.get("lost", 0) == 0 for r in results.values()) else 1
    if args.baseline:
        out = (await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "loadtest.baseline",
                                                         str(args.subscribers)],
                                       capture_output=True, text=True, check=True, timeout=60)).stdout.strip()
        print(out)
        limit = float(out.rsplit(":", 1)[1].split()[0].replace(",", ""))
        if "deliveries_per_server_cpu_s" in results["fugato"]:
            print(f"fugato / raw send loop: {results['fugato']['deliveries_per_server_cpu_s'] / limit:.2f}")
    if len(results) == 2 and "deliveries_per_server_cpu_s" in results["fugato"]:
        ratio = results["fugato"]["deliveries_per_server_cpu_s"] / results["socketio"]["deliveries_per_server_cpu_s"]
        print(f"fugato / python-socketio deliveries per server CPU-second: {ratio:.1f}x")
    return 0 if all(r.get("lost", 0) == 0 for r in results.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("fanout", "channels", "idle", "storm"), default="fanout")
    parser.add_argument("--spawn", action="store_true", help="start the server for this run (memory engine)")
    parser.add_argument("--peer", choices=("socketio",), help="also run the workload against python-socketio")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=API_KEY)
    parser.add_argument("--secret", default=SECRET, help="HMAC secret for connection tokens")
    parser.add_argument("--server-pid", default="",
                        help="pid of the running server (for CPU and RSS); comma-separated for several workers")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=10000)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0, help="publications/s in total; 0 = as fast as possible")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of publishing (or idling)")
    parser.add_argument("--baseline", action="store_true",
                        help="also measure this machine's limit: a bare Python loop of one send() per delivery")
    parser.add_argument("--write-delay-ms", type=float, default=0.0,
                        help="client.write_delay of the spawned server (Centrifugo PRO's batching knob)")
    parser.add_argument("--engine", choices=("memory", "redis", "redis_cluster", "nats"), default="memory",
                        help="with --spawn: redis starts a private Redis, redis_cluster a private 3-master Redis "
                             "Cluster for the run; "
                             "nats runs the workload over a NATS broker and over the Redis engine, and compares")
    parser.add_argument("--workers", default="1",
                        help="with --spawn: worker processes; a list such as 1,2 runs each and prints the ratio")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the spawned server to the first CPU and the load generator to the others")
    parser.add_argument("--swarm", choices=("auto", "c", "python"), default="auto",
                        help="subscriber swarm implementation: C (compiled on first use) when a compiler exists")
    parser.add_argument("--lazy-ms", type=float, default=1.0,
                        help="the subscriber swarm sleeps this long after each round of reads (fewer wake-ups)")
    args = parser.parse_args()
    if not args.spawn and not args.server_pid:
        parser.error("give --spawn, or --server-pid of the running server")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
