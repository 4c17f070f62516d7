"""`fugato serve --workers N`: workers under supervisord on one port, as nodes of one Redis Cluster."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import REPO, PyFactory, ServerFactory, ServerProcess, make_config, unique_channel, wait_until
from redis_servers import RedisCluster
from test_protocol_raw import Raw
from test_redis_nodes import redis_engine


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def worker_pids(server: ServerProcess) -> list[int]:
    """The worker processes: children of supervisord, itself the child of `fugato serve --workers`."""
    assert server.pid is not None
    pids = []
    for supervisord in children(server.pid):
        for pid in children(supervisord):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            except OSError:
                continue  # exited between the listing and the read (a worker being killed or restarted)
            if "--worker-index" in cmdline:
                pids.append(pid)
    return sorted(pids)


@pytest.fixture
async def workers(server_factory: ServerFactory, redis_cluster: RedisCluster, redis_prefix: str) -> ServerProcess:
    config = redis_engine(redis_cluster.url, redis_prefix) | {"prometheus": {"enabled": True},
                                                              "shutdown": {"timeout": "5s"}}
    server = await server_factory(config, name="workers", extra_args=("--workers", "2"))

    async def two_nodes() -> bool:
        return len((await server.api_result("info"))["nodes"]) == 2

    await wait_until(two_nodes, timeout=15)
    return server


async def connect_many(stack: AsyncExitStack, server: ServerProcess, n: int, channel: str) -> list[Raw]:
    session = await stack.enter_async_context(aiohttp.ClientSession())
    clients = []
    for i in range(n):
        ws = await stack.enter_async_context(session.ws_connect(server.ws_url))
        c = Raw(ws)
        await c.connect(server.token(f"user{i}"))
        await c.send({"id": 2, "subscribe": {"channel": channel}})
        assert (await c.reply(2))["subscribe"] == {}
        clients.append(c)
    return clients


async def test_connections_spread_over_workers_and_metrics_add_up(workers: ServerProcess) -> None:
    ch = unique_channel("plain")
    async with AsyncExitStack() as stack:
        clients = await connect_many(stack, workers, 16, ch)

        async def spread() -> list[int] | None:
            counts = [n["num_clients"] for n in (await workers.api_result("info"))["nodes"]]
            return counts if sum(counts) == 16 else None

        counts = await wait_until(spread, timeout=10)
        assert all(c > 0 for c in counts), f"SO_REUSEPORT should spread 16 connections over both workers: {counts}"
        # A publication reaches the subscribers of both workers; so does a client's own publication.
        await workers.api_result("publish", {"channel": ch, "data": {"api": 1}})
        await clients[0].send({"id": 3, "publish": {"channel": ch, "data": {"client": 1}}})
        for c in clients:
            got = []
            while len(got) < 2:
                msg = await c.recv()
                if "push" in msg:  # skip the publisher's own reply
                    got.append(msg["push"]["pub"]["data"])
            assert {"api": 1} in got and {"client": 1} in got

        status, _, body = await workers.http("GET", "/metrics")
        assert status == 200
        text = body.decode()
        gauge = [line for line in text.splitlines() if line.startswith("centrifugo_node_num_clients ")]
        assert gauge == ["centrifugo_node_num_clients 16.0"], "the gauge sums over the workers"
        assert "centrifugo_client_command_duration_seconds_bucket" in text
        assert "centrifugo_api_command_duration_seconds_count" in text
        promtool = shutil.which("promtool")
        assert promtool, "promtool is needed to validate the exposition (tests/run.sh installs it)"
        check = await asyncio.create_subprocess_exec(promtool, "check", "metrics", stdin=subprocess.PIPE,
                                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = await check.communicate(body)
        assert check.returncode == 0, output.decode()


async def publish_retrying(server: ServerProcess, channel: str, data: Any) -> None:
    """A request that raced into the dying worker's accept queue is reset: an API client retries it."""
    for _ in range(5):
        try:
            await server.api_result("publish", {"channel": channel, "data": data})
            return
        except aiohttp.ClientOSError:
            continue
    raise AssertionError("publish failed 5 times")


async def test_killed_worker_is_restarted_and_its_clients_recover(workers: ServerProcess,
                                                                  py_factory: PyFactory) -> None:
    ch = unique_channel("feed:")
    clients = [await py_factory(workers, f"u{i}", min_reconnect_delay=0.3, max_reconnect_delay=1.0)
               for i in range(6)]
    for c in clients:
        await c.subscribe(ch)
    await workers.api_result("publish", {"channel": ch, "data": 0})
    before = worker_pids(workers)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    for i in range(1, 11):  # published while the killed worker's clients are reconnecting
        await publish_retrying(workers, ch, i)

    def complete(c: Any) -> bool:
        return sorted(e.ctx.pub.data for e in c.events("publication", ch)) == list(range(11))

    for c in clients:
        await wait_until(lambda c=c: complete(c), timeout=20, what="every publication, live or recovered")
    await wait_until(lambda: len(worker_pids(workers)) == 2 and worker_pids(workers) != before, timeout=15,
                     what="the killed worker is replaced")

    async def clients_gauge() -> str:
        body = (await workers.http("GET", "/metrics"))[2].decode()
        return next(line for line in body.splitlines() if line.startswith("centrifugo_node_num_clients "))

    # The dead worker's gauge is gone from the aggregate: it counts exactly the 6 live connections.
    try:
        await wait_until(lambda: _equals(clients_gauge(), "centrifugo_node_num_clients 6.0"), timeout=10)
    except AssertionError:
        info = await workers.api_result("info")
        raise AssertionError(f"{await clients_gauge()}; nodes: {info}; killed {before[0]}, "
                             f"now {worker_pids(workers)}") from None


async def test_a_worker_whose_event_loop_hangs_is_restarted(server_factory: ServerFactory,
                                                            redis_cluster: RedisCluster, redis_prefix: str) -> None:
    """SIGUSR2 makes a worker's event loop block (the test hook in node/liveness.py): the process lives on, but
    its heartbeat stops, and the liveness check kills it so that supervisord starts a fresh one."""
    config = redis_engine(redis_cluster.url, redis_prefix) | {"shutdown": {"timeout": "5s"}}
    server = await server_factory(config, name="hung", extra_args=("--workers", "2"),
                                  env={"FUGATO_WORKER_LIVENESS_TIMEOUT": "3", "FUGATO_TEST_BLOCK_LOOP_ON_SIGUSR2": "1"})
    await wait_until(lambda: len(worker_pids(server)) == 2, timeout=15, what="two workers")
    before = worker_pids(server)
    hung = before[0]
    # The hook is installed once the worker serves; before that SIGUSR2 would simply terminate it.
    await wait_until(lambda: catches(hung, signal.SIGUSR2), timeout=15, what="the worker's test hook")
    os.kill(hung, signal.SIGUSR2)
    await wait_until(lambda: f"(pid {hung}): event loop unresponsive" in server.log_text(), timeout=30,
                     what="the liveness check notices the stuck loop")
    await wait_until(lambda: len(worker_pids(server)) == 2 and hung not in worker_pids(server), timeout=20,
                     what="the stuck worker is replaced")
    assert before[1] in worker_pids(server), "the healthy worker is left alone"
    # The group serves on: the API answers, from whichever worker takes the connection.
    await wait_until(lambda: _node_count(server), timeout=15, what="the API answers")


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


async def _node_count(server: ServerProcess) -> bool:
    return len((await server.api_result("info"))["nodes"]) >= 2


async def _equals(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def test_sigterm_disconnects_everyone_with_3001_and_exits_zero(workers: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        clients = await connect_many(stack, workers, 8, unique_channel("plain"))
        workers.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(c.closed(timeout=15) for c in clients))
        assert closes == [(3001, "shutdown")] * 8
        assert await workers.wait_exit(timeout=20) == 0


async def test_memory_engine_with_several_workers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(make_config()))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "node", "serve", "--config", str(path),
                                                "--workers", "2", cwd=REPO, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert b"memory engine cannot span processes" in err


async def test_a_crash_loop_ends_with_a_non_zero_exit(tmp_path: Path) -> None:
    # Nothing listens on this Redis address: every worker fails at start, supervisord gives up, so do we.
    config = make_config({"engine": {"type": "redis", "redis": {"address": ["redis://127.0.0.1:1"]}}})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "serve", "--config", str(path), "--workers", "2", "--port", "0", cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FUGATO_MAX_CRASHES": "2", "FUGATO_CRASH_WINDOW": "60"})
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err.decode()[-2000:]
    assert b"keeps crashing" in err or b"kept crashing" in err


@pytest.fixture
async def reloadable(server_factory: ServerFactory) -> AsyncIterator[ServerProcess]:
    yield await server_factory()


async def test_sighup_reloads_channel_options(reloadable: ServerProcess) -> None:
    server = reloadable
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        c = Raw(await stack.enter_async_context(session.ws_connect(server.ws_url)))
        await c.connect(server.token("u"))
        await c.send({"id": 2, "subscribe": {"channel": "fresh:x"}})
        assert (await c.reply(2))["error"]["code"] == 102
        config = json.loads(server.config_path.read_text())
        config["channel"]["namespaces"].append({"name": "fresh", "allow_subscribe_for_client": True})
        server.config_path.write_text(json.dumps(config))
        server.send_signal(signal.SIGHUP)

        async def subscribable() -> bool:
            cmd_id = 100 + len(c.pending)
            await c.send({"id": cmd_id, "subscribe": {"channel": "fresh:x"}})
            return "subscribe" in await c.reply(cmd_id)

        await wait_until(subscribable, timeout=10, interval=0.1, what="the new namespace is known")
        await c.send({"id": 3, "presence": {"channel": "fresh:x"}})
        assert (await c.reply(3))["error"]["code"] == 108, "the connection stayed open through the reload"
