"""The PostgreSQL outbox consumer: rows of Centrifugo's outbox table become server API commands.

Table (Centrifugo's layout)::

    id BIGSERIAL PRIMARY KEY, method text, payload JSONB, partition INTEGER, created_at timestamptz

Each partition is consumed by one task per worker; every worker of every node runs one, and they share the
partitions without waiting on each other. A round claims the partition's oldest rows in one transaction with
``FOR UPDATE SKIP LOCKED`` and goes ahead only if the oldest row is among them (otherwise another worker holds
the partition's head and this one backs off), so a partition's rows run one batch at a time, in id order,
on whichever worker got there first. Rows whose command ran are deleted in the same transaction; a worker
that dies mid-batch leaves its rows to the next one (redelivery: an ``idempotency_key`` keeps a publication
from appearing twice). Rounds are started by a notification on ``partition_notification_channel`` or by
``partition_poll_interval``; a full batch starts the next round at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql

from node.consumers.base import BaseConsumer, RetryLaterError, next_backoff
from node.consumers.config import PostgresConsumerConfig

if TYPE_CHECKING:
    from node.api.executor import Executor

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 5.0
# A round (claim, run the commands, delete, commit) that takes longer than this is abandoned and retried:
# a stalled database or network then shows up as an error instead of a silent hang.
ROUND_TIMEOUT: Final = 30.0

_SELECT: Final = """
SELECT (SELECT min(id) FROM {table} WHERE partition = %(p)s), id, method, payload::text
FROM {table} WHERE partition = %(p)s ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED
"""
_DELETE: Final = "DELETE FROM {table} WHERE id = ANY(%(ids)s)"


def _table(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


class PostgresConsumer(BaseConsumer):
    def __init__(self, name: str, config: PostgresConsumerConfig, executor: Executor) -> None:
        super().__init__(name, executor)
        self.config = config
        table = _table(config.outbox_table_name)
        self._select = sql.SQL(_SELECT).format(table=table)
        self._delete = sql.SQL(_DELETE).format(table=table)
        self._wake = [asyncio.Event() for _ in range(config.num_partitions)]

    def stop(self) -> None:
        super().stop()
        for event in self._wake:  # partitions waiting for work stop waiting
            event.set()

    async def _connect(self, dsn: str, autocommit: bool) -> psycopg.AsyncConnection[Any]:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit,
                                                         connect_timeout=int(CONNECT_TIMEOUT))

    async def run(self) -> None:
        listen = asyncio.create_task(self._listen()) if self.config.partition_notification_channel else None
        try:
            async with asyncio.TaskGroup() as tg:
                for partition in range(self.config.num_partitions):
                    tg.create_task(self._partition(partition))
        finally:
            if listen is not None:  # nothing to finish there
                listen.cancel()
                await asyncio.gather(listen, return_exceptions=True)

    async def _partition(self, partition: int) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        retries = 0
        wake = self._wake[partition]
        key = f"partition {partition}"
        try:
            while not self.stopping:
                wake.clear()
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect(self.config.dsn, autocommit=False)
                    async with asyncio.timeout(ROUND_TIMEOUT):
                        more = await self._round(conn, partition)
                except RetryLaterError as e:
                    retries += 1
                    self.failed(key, f"{key}: command to retry", e)
                    await asyncio.sleep(next_backoff(retries))
                    continue
                except (psycopg.Error, OSError, TimeoutError) as e:
                    retries += 1
                    self.failed(key, key, e)
                    if conn is not None:
                        await conn.close()
                    conn = None
                    await asyncio.sleep(next_backoff(retries))
                    continue
                retries = 0
                self.recovered(key)
                if not more:
                    # Nothing left (or another worker holds the partition): until a notification or a poll.
                    try:
                        async with asyncio.timeout(self.config.partition_poll_interval):
                            await wake.wait()
                    except TimeoutError:
                        pass
        finally:
            if conn is not None:
                await conn.close()

    async def _round(self, conn: psycopg.AsyncConnection[Any], partition: int) -> bool:
        """Run one batch of ``partition``; True when a full batch suggests more rows are waiting."""
        limit = self.config.partition_select_limit
        retry: RetryLaterError | None = None
        done: list[int] = []
        async with conn.transaction():
            cur = await conn.execute(self._select, {"p": partition, "n": limit})
            rows = await cur.fetchall()
            if not rows or rows[0][0] != rows[0][1]:
                return False  # empty, or the head is claimed by another worker
            for _, row_id, method, payload in rows:
                try:
                    await self.dispatcher.dispatch(method, payload)
                except RetryLaterError as e:
                    retry = e  # the rows before it are done: delete those, keep this one as the head
                    break
                done.append(row_id)
            if done:
                await conn.execute(self._delete, {"ids": done})
        if done:
            self.dispatcher.metrics.consumer_processed(self.name, len(done))
        if retry is not None:
            raise retry
        return len(rows) == limit

    async def _listen(self) -> None:
        channel = self.config.partition_notification_channel
        dsn = self.config.partition_notification_dsn or self.config.dsn
        retries = 0
        while True:
            try:
                conn = await self._connect(dsn, autocommit=True)
            except (psycopg.Error, OSError, TimeoutError) as e:
                retries += 1
                self.failed("listen", "LISTEN connection", e)
                await asyncio.sleep(next_backoff(retries))
                continue
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                retries = 0
                self.recovered("listen")
                for event in self._wake:  # notifications may have been missed while disconnected
                    event.set()
                async for notify in conn.notifies():
                    self._notified(notify.payload)
            except (psycopg.Error, OSError) as e:
                retries += 1
                self.failed("listen", "LISTEN connection", e)
                await asyncio.sleep(next_backoff(retries))
            finally:
                await conn.close()

    def _notified(self, payload: str) -> None:
        try:
            partition = int(payload)
        except ValueError:
            logger.error("consumer %s: notification payload %r is not a partition number", self.name, payload)
            return
        if 0 <= partition < len(self._wake):
            self._wake[partition].set()
        else:
            logger.error("consumer %s: notified partition %d is out of range", self.name, partition)
