"""Consumed commands per second for each async consumer type: PostgreSQL outbox, Redis Streams, NATS JetStream.

    python -m loadtest.consumer_bench [--messages N] [--partitions P] [--types postgresql,redis_stream,nats_jetstream]

For each type: fills the source with N publish commands spread over P partitions (outbox partitions, streams,
or subjects with a JetStream consumer each), starts one Fugato node (memory engine, one worker) consuming
them, and times from the node's first answer on /health until its ``consumers_messages_processed_total``
reaches N. PostgreSQL, redis-server and nats-server are started on free loopback ports (needs initdb/postgres,
redis-server >= 7 and nats-server) and stopped afterwards. Each type is bounded by --timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from nats_servers import NatsServer  # noqa: E402 - the tests' server helpers
from postgres_server import PostgresServer  # noqa: E402
from redis_servers import RedisStandalone, free_port  # noqa: E402

Fill = Callable[[int, int], Awaitable[dict[str, Any]]]  # (messages, partitions) -> the consumers config entries


def command(i: int, partitions: int) -> bytes:
    return json.dumps({"channel": f"bench{i % partitions}", "data": {"i": i, "text": "x" * 60},
                       "idempotency_key": f"k{i}"}).encode()


async def fill_postgresql(pg: PostgresServer, n: int, partitions: int) -> list[dict[str, Any]]:
    import psycopg  # noqa: PLC0415 - only for this type

    pg.execute("CREATE TABLE IF NOT EXISTS bench_outbox (id BIGSERIAL PRIMARY KEY, method text NOT NULL, "
               "payload JSONB NOT NULL, partition INTEGER NOT NULL default 0, created_at TIMESTAMP WITH TIME ZONE "
               "DEFAULT now() NOT NULL); TRUNCATE bench_outbox")
    async with await psycopg.AsyncConnection.connect(pg.dsn) as conn, conn.cursor() as cur:
        await cur.executemany("INSERT INTO bench_outbox (method, payload, partition) VALUES ('publish', %s, %s)",
                              [(command(i, partitions).decode(), i % partitions) for i in range(n)])
    return [{"enabled": True, "name": "bench", "type": "postgresql", "postgresql": {
        "dsn": pg.dsn, "outbox_table_name": "bench_outbox", "num_partitions": partitions}}]


async def fill_redis_stream(redis: RedisStandalone, n: int, partitions: int) -> list[dict[str, Any]]:
    import redis.asyncio as aioredis  # noqa: PLC0415

    r = aioredis.Redis(host="127.0.0.1", port=redis.port)
    streams = [f"bench{p}" for p in range(partitions)]
    await r.delete(*streams)
    for s in streams:
        await r.xgroup_create(s, "bench", id="0", mkstream=True)
    async with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(streams[i % partitions], {"method": "publish", "payload": command(i, partitions)})
        await pipe.execute()
    await r.aclose()
    return [{"enabled": True, "name": "bench", "type": "redis_stream", "redis_stream": {
        "address": [redis.url], "streams": streams, "consumer_group": "bench"}}]


async def fill_nats_jetstream(server: NatsServer, n: int, partitions: int) -> list[dict[str, Any]]:
    import nats  # noqa: PLC0415
    from nats.js.api import StorageType  # noqa: PLC0415

    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.>"], storage=StorageType.FILE)
    for i in range(n):
        await nc.publish(f"bench.p{i % partitions}", command(i, partitions),
                         headers={"centrifugo-method": "publish"})
    await nc.flush()
    for _ in range(600):  # stored asynchronously after the flush: at most 30 s
        if (await js.stream_info("BENCH")).state.messages >= n:
            break
        await asyncio.sleep(0.05)
    await nc.close()
    return [{"enabled": True, "name": f"bench{p}", "type": "nats_jetstream", "nats_jetstream": {
        "url": server.url, "stream_name": "BENCH", "subjects": [f"bench.p{p}"], "durable_consumer_name": f"bench{p}",
        "deliver_policy": "all"}} for p in range(partitions)]


def processed(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("centrifugo_consumers_messages_processed_total{"))


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def consume(workdir: Path, consumers: list[dict[str, Any]], n: int, timeout: float) -> tuple[float, float]:
    """Run a node until it processed ``n`` commands: (seconds, node CPU seconds)."""
    port = free_port()
    config = workdir / "bench.json"
    config.write_text(json.dumps({"log": {"level": "error"}, "prometheus": {"enabled": True},
                                  "consumers": consumers}))
    with (workdir / "node.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(config), "--port", str(port),
                                 "--host", "127.0.0.1"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start: {(workdir / 'node.log').read_text()[-2000:]}")
            time.sleep(0.01)
        started, cpu0 = time.monotonic(), _cpu(proc.pid)
        while processed(port) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {processed(port):.0f}/{n} consumed within {timeout} s")
            time.sleep(0.02)
        return time.monotonic() - started, _cpu(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--types", default="postgresql,redis_stream,nats_jetstream")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    n, partitions = args.messages, args.partitions
    print(f"{n} publish commands over {partitions} partitions, one Fugato node (memory engine, one worker)")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for kind in args.types.split(","):
            if kind == "postgresql":
                pg = PostgresServer().start()
                stack.callback(pg.destroy)
                consumers = asyncio.run(fill_postgresql(pg, n, partitions))
            elif kind == "redis_stream":
                consumers = asyncio.run(fill_redis_stream(stack.enter_context(RedisStandalone(tmp / "redis")), n,
                                                          partitions))
            elif kind == "nats_jetstream":
                nats_server = NatsServer(tmp / "nats")
                nats_server.start()
                stack.callback(nats_server.stop)
                consumers = asyncio.run(fill_nats_jetstream(nats_server, n, partitions))
            else:
                parser.error(f"unknown type {kind}")
            workdir = tmp / kind
            workdir.mkdir()
            seconds, cpu = consume(workdir, consumers, n, args.timeout)
            print(f"  {kind:15s} {n / seconds:9.0f} commands/s  ({seconds:.2f} s, node CPU {cpu:.2f} s, "
                  f"{n / max(cpu, 1e-9):.0f} commands per CPU-second)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
