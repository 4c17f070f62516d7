"""The PostgreSQL outbox consumer against a real PostgreSQL (started by the test on a free loopback port)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from consumer_scenarios import (
    SLOW_TEST_TIMEOUT,
    barrier,
    exactly_once_across_a_killed_node,
    health_names,
    metric,
    publish_command,
    redis_engine,
    seqs,
    subscribed_client,
)
from harness import PyFactory, ServerFactory, unique_channel, wait_until
from postgres_server import OUTBOX_DDL, PostgresServer
from redis_servers import RedisStandalone


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture
def outbox(postgres: PostgresServer) -> str:
    """A fresh outbox table (Centrifugo's DDL) with its NOTIFY trigger on channel ``<table>_change``."""
    table = "outbox_" + uuid.uuid4().hex[:10]
    postgres.execute(OUTBOX_DDL.format(table=table))
    return table


def consumer(postgres: PostgresServer, table: str, **options: Any) -> dict[str, Any]:
    """A consumer as in Centrifugo's docs, keys unchanged."""
    return {"consumers": [{
        "enabled": True, "name": "outbox", "type": "postgresql",
        "postgresql": {"dsn": postgres.dsn, "outbox_table_name": table, "num_partitions": 1,
                       "partition_select_limit": 100, "partition_poll_interval": "300ms",
                       "partition_notification_channel": f"{table}_change", **options},
    }]}


async def insert(dsn: str, table: str, rows: list[tuple[str, str, int]]) -> None:
    """One transaction inserting ``(method, payload JSON, partition)`` rows."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.cursor() as cur:
        await cur.executemany(f"INSERT INTO {table} (method, payload, partition) VALUES (%s, %s, %s)", rows)


@pytest.mark.timeout(SLOW_TEST_TIMEOUT)
async def test_outbox_rows_reach_clients_exactly_once_in_order_across_a_killed_node(
        postgres: PostgresServer, outbox: str, server_factory: ServerFactory, py_factory: PyFactory,
        redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    partitions, per_partition, per_tx = 4, 2500, 50
    config = {**redis_engine(redis_standalone.url, redis_prefix),
              **consumer(postgres, outbox, num_partitions=partitions)}

    async def writer(partition: int, channel: str) -> None:  # one writer per partition, many transactions
        for start in range(0, per_partition, per_tx):
            await insert(postgres.dsn, outbox, [
                ("publish", json.dumps(publish_command(channel, seq)), partition)
                for seq in range(start, start + per_tx)])

    async def produce(channels: list[str]) -> None:
        await asyncio.gather(*(writer(p, ch) for p, ch in enumerate(channels)))

    async def drained() -> bool:
        return postgres.execute(f"SELECT count(*) FROM {outbox}")[0][0] == 0

    await exactly_once_across_a_killed_node(server_factory, py_factory, config, partitions=partitions,
                                            per_partition=per_partition, produce=produce, drained=drained)


async def test_poison_rows_are_skipped_and_counted_and_an_outage_heals(
        postgres: PostgresServer, outbox: str, server_factory: ServerFactory, py_factory: PyFactory) -> None:
    server = await server_factory({**consumer(postgres, outbox), "prometheus": {"enabled": True}})
    ch = unique_channel("plain")
    py = await subscribed_client(py_factory, server, [ch])
    await insert(postgres.dsn, outbox, [
        ("publish", json.dumps({"channel": ch, "data": {"seq": 0}}), 0),
        ("history", json.dumps({"channel": ch}), 0),  # a read: not run by consumers
        ("no_such_method", "{}", 0),
        ("publish", "[1, 2]", 0),  # not a request object
        ("publish", json.dumps({"channel": "nonexistent_ns:x", "data": {}}), 0),  # rejected: unknown namespace
        ("publish", json.dumps({"channel": ch}), 0),  # rejected: no data
        ("", json.dumps({"method": "publish", "payload": json.dumps({"channel": ch, "data": {"seq": 1}})}), 0),
        ("publish", json.dumps({"channel": ch, "data": {"seq": 2}}), 0),
    ])
    await wait_until(lambda: seqs(py, ch) == [0, 1, 2], timeout=20, what="the good rows around the poison ones")
    await wait_until(lambda: postgres.execute(f"SELECT count(*) FROM {outbox}")[0][0] == 0, timeout=10,
                     what="every row deleted")
    assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="unsupported_method"') == 2
    assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="malformed"') == 1
    assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="rejected"') == 2
    assert await metric(server, "centrifugo_consumers_messages_processed_total") == 8

    # The database goes away: /health names the consumer (still 200: clients are unaffected) within seconds.
    postgres.stop()
    try:
        await wait_until(lambda: health_names(server, "outbox"), timeout=20, what="/health reports the consumer")
    finally:
        postgres.start()
    await wait_until(lambda: health_names(server, ""), timeout=30, what="the consumer recovers by itself")
    await insert(postgres.dsn, outbox, [("publish", json.dumps({"channel": ch, "data": {"seq": 3}}), 0)])
    await wait_until(lambda: seqs(py, ch) == [0, 1, 2, 3], timeout=20, what="a row inserted after the outage")
    await barrier(server, py, [ch])
    assert seqs(py, ch) == [0, 1, 2, 3, "end"]
    assert await metric(server, "centrifugo_consumers_errors_total") >= 1


async def test_an_internal_error_is_retried_in_order_never_skipped(
        postgres: PostgresServer, outbox: str, server_factory: ServerFactory, tmp_path: Path) -> None:
    engine = RedisStandalone(tmp_path / "engine").start()  # private: the test stops it
    server = await server_factory({**redis_engine(engine.url, "fgt"), **consumer(postgres, outbox)})
    ch = unique_channel("chat:")  # with history, so the result can be read back
    try:
        engine.stop()  # every publish now fails with error 100: retried, not skipped, rows kept
        await insert(postgres.dsn, outbox, [("publish", json.dumps(publish_command(ch, seq)), 0)
                                            for seq in range(5)])
        await wait_until(lambda: metric(server, "centrifugo_consumers_errors_total"), timeout=20,
                         what="the failing publish counted as an error")
        assert postgres.execute(f"SELECT count(*) FROM {outbox}")[0][0] == 5, "nothing deleted while failing"
        assert await metric(server, "centrifugo_consumers_messages_skipped_total") == 0
        engine.start()
        await wait_until(lambda: postgres.execute(f"SELECT count(*) FROM {outbox}")[0][0] == 0, timeout=30,
                         what="the rows run once Redis is back")
        history = await server.api_result("history", {"channel": ch, "limit": -1})
        assert [p["data"]["seq"] for p in history["publications"]] == list(range(5))
    finally:
        await server.stop()
        engine.stop()
