"""Centrifugo's PostgreSQL map broker (``map_broker.type: "postgres"``): map channels' state, change stream and
delivery between nodes in PostgreSQL (tables and functions: node/broker/postgres_map_schema.py).

Every change is one call of ``{b}_map_apply`` (state, stream entry and offset in one transaction, so
applications can call ``{b}_map_publish`` inside their own). Each node polls the stream table per delivery shard
(``outbox.poll_interval``, sooner after its own writes, or on NOTIFY with ``use_notify``) and hands the changes
of the channels it has subscribers in to the node, in offset order. While PostgreSQL is unreachable calls fail
within ``OP_TIMEOUT``, ``healthy()`` is false, and the poller retries; it resumes where it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, Final

import msgpack
import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from node import models
from node.broker import wire
from node.broker.base import Broker, BrokerEventHandler, PublishDone
from node.broker.postgres_map_schema import schema
from node.maps.broker_config import PostgresMapBrokerConfig
from node.maps.state import UNCONDITIONAL, Conditions, Entry
from node.maps.store import set_in_task
from node.models import Publication, StreamPosition

logger = logging.getLogger(__name__)

OP_TIMEOUT: Final = 5.0  # seconds a call may wait for a connection and its answer
CONNECT_TIMEOUT: Final = 2
SUSPECT_FOR: Final = 30.0  # seconds after a failure during which pooled connections are checked before use
RETRY_MAX: Final = 2.0  # the poller's longest pause between attempts while PostgreSQL is down
TRIM_GRACE: Final = 10.0  # seconds a trimmed stream entry stays readable for pollers that lag behind
DEFAULT_META_TTL: Final = 720 * 3600.0
PEM_HEAD: Final = "-----BEGIN"

PgConn = psycopg.AsyncConnection[TupleRow]


def _interval(seconds: float) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds > 0 else None


def _info(raw: bytes | None) -> models.ClientInfo | None:
    return wire.decode_info(msgpack.unpackb(raw, raw=False)) if raw else None


def _pem_file(value: str, suffix: str) -> str:
    """A PEM option as libpq wants it: a file path (PEM text is written to a private temporary file)."""
    if not value.lstrip().startswith(PEM_HEAD):
        return value
    f = tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False)  # noqa: SIM115 - must outlive this call
    with f:
        f.write(value)
    return f.name


def connect_kwargs(cfg: PostgresMapBrokerConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "autocommit": True}
    tls = cfg.tls
    if tls.enabled:
        kw["sslmode"] = "require" if tls.insecure_skip_verify else "verify-full" if tls.server_ca_pem else "require"
        if tls.server_ca_pem:
            kw["sslrootcert"] = _pem_file(tls.server_ca_pem, ".ca.pem")
        if tls.cert_pem:
            kw["sslcert"] = _pem_file(tls.cert_pem, ".crt.pem")
            kw["sslkey"] = _pem_file(tls.key_pem, ".key.pem")
    return kw


class PostgresMapBroker(Broker):
    """A Broker for map channels and their MapStore (node/maps/store.py) in one."""

    def __init__(self, cfg: PostgresMapBrokerConfig, *, history_meta_ttl: float = DEFAULT_META_TTL) -> None:
        self.cfg = cfg
        self.base = cfg.table_prefix + ("_binary" if cfg.binary_data else "")
        self._kwargs = connect_kwargs(cfg)
        self._pool: AsyncConnectionPool[PgConn] = AsyncConnectionPool(
            cfg.dsn, min_size=1, max_size=cfg.pool_size, open=False, kwargs=self._kwargs, timeout=OP_TIMEOUT,
            check=self._check)
        self._default_meta_ttl = history_meta_ttl
        self._handler: BrokerEventHandler | None = None
        self._channels: set[str] = set()
        self._last: dict[int, int] = {}  # delivery shard -> the last stream seq handed over
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._healthy = False
        self._closing = False
        self._suspect_until = 0.0  # until then, a pooled connection is pinged before use
        b = self.base
        self._apply_sql = (f"SELECT channel_offset, epoch, suppressed, suppress_reason "
                           f"FROM {b}_map_apply({', '.join(['%s'] * 16)})")
        self._poll_sql = (
            f"SELECT s.shard, s.seq, s.channel, s.channel_offset, s.epoch, s.key, s.data, s.removed, s.info, s.tags, "
            f"(extract(epoch FROM s.created_at) * 1000)::BIGINT, s.prev_data "
            f"FROM unnest(%s::INT[], %s::BIGINT[]) AS c(shard, last) "
            f"CROSS JOIN LATERAL (SELECT * FROM {b}_map_stream t WHERE t.shard = c.shard AND t.seq > c.last "
            f"ORDER BY t.seq LIMIT %s) s ORDER BY s.shard, s.seq")
        self._meta_sql = (
            f"INSERT INTO {b}_map_meta AS m (channel, epoch, expires_at) VALUES (%s, {b}_map_epoch(), "
            f"coalesce(now() + %s::INTERVAL, 'infinity')) "
            f"ON CONFLICT (channel) DO UPDATE SET "
            f"epoch = CASE WHEN m.expires_at <= now() THEN EXCLUDED.epoch ELSE m.epoch END, "
            f"top = CASE WHEN m.expires_at <= now() THEN 0 ELSE m.top END, "
            f"stream_expires_at = CASE WHEN m.expires_at <= now() THEN now() ELSE m.stream_expires_at END, "
            f"removed_to = CASE WHEN m.expires_at <= now() THEN 0 ELSE m.removed_to END, "
            f"expires_at = greatest(m.expires_at, EXCLUDED.expires_at) "
            f"RETURNING m.epoch, m.top, {b}_map_floor(m.top, m.stream_size, m.removed_to), "
            f"m.stream_expires_at > now()")

    async def _check(self, conn: PgConn) -> None:
        """Ping a pooled connection only while PostgreSQL was lately failing: then idle connections may be
        stale (a restarted server), otherwise a ping per call would double the round trips."""
        if time.monotonic() < self._suspect_until:
            await AsyncConnectionPool.check_connection(conn)

    @contextlib.asynccontextmanager
    async def _conn(self, timeout: float = OP_TIMEOUT) -> AsyncIterator[PgConn]:
        """A pooled connection for one operation, all of it within ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self._pool.connection() as conn:
                yield conn
        except (psycopg.Error, OSError, TimeoutError):
            self._suspect_until = time.monotonic() + SUSPECT_FOR
            raise

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        """Creates the schema (unless ``skip_schema_init``) and starts delivering. PostgreSQL must be reachable
        at start, as for Centrifugo; later outages are survived."""
        self._handler = handler
        await self._pool.open(wait=True, timeout=OP_TIMEOUT)
        async with self._conn(OP_TIMEOUT * 2) as conn:
            if not self.cfg.skip_schema_init:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.base + "_map_schema",))
                    await conn.execute(schema(self.base, binary=self.cfg.binary_data,
                                              num_shards=self.cfg.num_shards, use_notify=self.cfg.use_notify))
            rows = await (await conn.execute(f"SELECT shard, seq FROM {self.base}_map_shard")).fetchall()
        self._last = {int(shard): int(seq) for shard, seq in rows}
        self._healthy = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loop()), loop.create_task(self._cleanup_loop())]
        if self.cfg.use_notify:
            self._tasks.append(loop.create_task(self._listen_loop()))

    async def close(self) -> None:
        """Also the MapStore's close (the map service and the engine both call it): idempotent."""
        self._closing = True  # the loops stop even if a cancellation below gets lost in a timeout
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pool.close()

    def healthy(self) -> bool:
        return self._healthy

    # --- delivery ----------------------------------------------------------------------------------------

    async def subscribe(self, *channels: str) -> None:
        self._channels.update(channels)

    async def unsubscribe(self, *channels: str) -> None:
        self._channels.difference_update(channels)

    async def _poll_loop(self) -> None:
        pause = self.cfg.outbox.poll_interval
        while not self._closing:
            await self._sleep_or_wake(pause)
            self._wake.clear()
            try:
                while await self._poll_once():
                    pass  # a full batch: more may be waiting
                self._healthy, pause = True, self.cfg.outbox.poll_interval
            except (psycopg.Error, OSError, TimeoutError) as e:
                if self._healthy:
                    logger.warning("map broker: PostgreSQL unavailable: %s", e)
                self._healthy, pause = False, min(max(pause * 2, 0.1), RETRY_MAX)

    async def _sleep_or_wake(self, pause: float) -> None:
        """Wait up to ``pause`` seconds for a wake-up. Not ``asyncio.timeout`` around the wait: on Python 3.11
        a cancellation that meets the timeout's expiry can be taken for the timeout and lost, and ``close()``
        would wait for this loop forever."""
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((waiter,), timeout=pause)
        finally:
            waiter.cancel()

    async def _poll_once(self) -> bool:
        shards = sorted(self._last)
        batch = self.cfg.outbox.batch_size
        async with self._conn() as conn:
            cur = await conn.execute(self._poll_sql, (shards, [self._last[s] for s in shards], batch))
            rows = await cur.fetchall()
        handler, channels = self._handler, self._channels
        counts: dict[int, int] = {}
        for shard, seq, channel, offset, epoch, key, data, removed, info, tags, time_ms, prev in rows:
            self._last[shard] = seq
            counts[shard] = counts.get(shard, 0) + 1
            if handler is not None and channel in channels:
                # A key's delta base travels with its change (the nodes keep no values of their own).
                pub = Publication(data=bytes(data), offset=offset, info=_info(info), tags=tags, time_ms=time_ms,
                                  key=key, removed=removed, delta=prev is not None,
                                  prev_data=None if prev is None else bytes(prev))
                handler.handle_publication(channel, pub, StreamPosition(offset, epoch))
        return any(n >= batch for n in counts.values())

    async def _listen_loop(self) -> None:
        dsn = self.cfg.notify_dsn or self.cfg.dsn
        while not self._closing:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, **self._kwargs) as conn:
                    await conn.execute(f"LISTEN {self.base}_map_stream")
                    self._wake.set()  # whatever was written while not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except (psycopg.Error, OSError) as e:
                logger.debug("map broker: LISTEN connection: %s", e)
            await asyncio.sleep(RETRY_MAX)

    async def _cleanup_loop(self) -> None:
        """Drops what no read can return any more: changes past their channel's stream size (after a grace for
        lagging pollers), streams past their TTL, entries older than ``stream_retention``, expired metas."""
        b = self.base
        statements = (
            f"DELETE FROM {b}_map_stream s USING {b}_map_meta m WHERE s.channel = m.channel "
            f"AND s.created_at < now() - %(grace)s AND (s.epoch <> m.epoch OR m.stream_expires_at <= now() "
            f"OR s.channel_offset <= {b}_map_floor(m.top, m.stream_size, m.removed_to))",
            f"DELETE FROM {b}_map_stream WHERE created_at < now() - %(retention)s",
            f"DELETE FROM {b}_map_result WHERE expires_at <= now()",
            f"DELETE FROM {b}_map_meta m WHERE m.expires_at <= now() AND NOT EXISTS "
            f"(SELECT 1 FROM {b}_map_state s WHERE s.channel = m.channel)",
        )
        params = {"grace": timedelta(seconds=TRIM_GRACE), "retention": timedelta(seconds=self.cfg.stream_retention)}
        while not self._closing:
            await asyncio.sleep(self.cfg.cleanup_interval if self.cfg.cleanup_interval > 0 else 60.0)
            try:
                async with self._conn(OP_TIMEOUT * 6) as conn:
                    for statement in statements:
                        await conn.execute(statement, params)
            except (psycopg.Error, OSError, TimeoutError) as e:
                logger.warning("map broker: cleanup: %s", e)

    # --- writes ------------------------------------------------------------------------------------------

    async def _apply(self, op: str, channel: str, data: bytes, opts: models.PublishOptions,
                     key_ttl: float, conditions: Conditions = UNCONDITIONAL) -> models.PublishResult:
        info = opts.client_info
        params = (op, channel, opts.key, data, conditions.key_mode or None, _interval(key_ttl),
                  _interval(opts.history_meta_ttl or self._default_meta_ttl), opts.history_size,
                  _interval(opts.history_ttl),
                  msgpack.packb(wire.encode_info(info), use_bin_type=True) if info is not None else None,
                  Jsonb(dict(opts.tags)) if opts.tags else None, conditions.version, conditions.version_epoch,
                  opts.idempotency_key or None, _interval(opts.idempotent_result_ttl), opts.use_delta)
        async with self._conn() as conn:
            row = await (await conn.execute(self._apply_sql, params)).fetchone()
        assert row is not None
        offset, epoch, suppressed, reason = row
        if not suppressed:
            self._wake.set()  # our own subscribers see it without waiting for the next poll
        return models.PublishResult(StreamPosition(int(offset), epoch), suppressed=bool(suppressed),
                                    suppress_reason=reason or "")

    async def publish(self, channel: str, data: bytes, opts: models.PublishOptions) -> models.PublishResult:
        return await self._apply("append", channel, data, opts, 0.0)

    async def set(self, channel: str, data: bytes, opts: models.PublishOptions, key_ttl: float,
                  conditions: Conditions = UNCONDITIONAL) -> models.PublishResult:
        return await self._apply("set", channel, data, opts, key_ttl, conditions)

    def set_then(self, channel: str, data: bytes, opts: models.PublishOptions, key_ttl: float,
                 done: PublishDone) -> None:
        set_in_task(self, channel, data, opts, key_ttl, done)  # a transaction: a task in any case

    async def remove(self, channel: str, opts: models.PublishOptions, *,
                     expired_only: bool = False) -> models.PublishResult:
        return await self._apply("expire" if expired_only else "remove", channel, b"", opts, 0.0)

    async def publish_join(self, channel: str, info: models.ClientInfo) -> None:
        return None  # map channels have no join/leave (their presence is the map_clients / map_users types)

    async def publish_leave(self, channel: str, info: models.ClientInfo) -> None:
        return None

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        return None  # the engine's broker carries control messages

    # --- reads -------------------------------------------------------------------------------------------

    async def history(self, channel: str, opts: models.HistoryOptions) -> models.HistoryResult:
        meta_ttl = _interval(opts.history_meta_ttl or self._default_meta_ttl)  # None (negative): permanent
        async with self._conn() as conn:
            row = await (await conn.execute(self._meta_sql, (channel, meta_ttl))).fetchone()
            assert row is not None
            epoch, top, floor, live = row  # floor: the last offset no read returns any more
            position = StreamPosition(int(top), epoch)
            if opts.limit == 0 or not live:
                return models.HistoryResult((), position)
            rows = await (await conn.execute(*self._history_query(channel, epoch, int(floor), opts))).fetchall()
        pubs = tuple(Publication(data=bytes(data), offset=offset, info=_info(info), tags=tags, time_ms=time_ms,
                                 key=key, removed=removed)
                     for offset, data, info, tags, time_ms, key, removed in rows)
        return models.HistoryResult(pubs, position)

    def _history_query(self, channel: str, epoch: str, floor: int,
                       opts: models.HistoryOptions) -> tuple[str, dict[str, Any]]:
        where = ["channel = %(channel)s", "epoch = %(epoch)s", "channel_offset > %(floor)s"]
        params: dict[str, Any] = {"channel": channel, "epoch": epoch, "floor": floor}
        if opts.since is not None:
            where.append("channel_offset < %(since)s" if opts.reverse else "channel_offset > %(since)s")
            params["since"] = opts.since.offset
        order = "DESC" if opts.reverse else "ASC"
        limit = f" LIMIT {int(opts.limit)}" if opts.limit > 0 else ""
        return (f"SELECT channel_offset, data, info, tags, (extract(epoch FROM created_at) * 1000)::BIGINT, key, "
                f"removed FROM {self.base}_map_stream WHERE {' AND '.join(where)} "
                f"ORDER BY channel_offset {order}{limit}", params)

    async def remove_history(self, channel: str) -> None:
        async with self._conn() as conn:
            await conn.execute(f"UPDATE {self.base}_map_meta SET removed_to = top WHERE channel = %s", (channel,))

    # --- map state (MapStore) ----------------------------------------------------------------------------
    # A key past its TTL is listed, counted and touched until the cleanup round announces its removal
    # (node/maps/store.py), as Centrifugo's reads do.

    async def _rows(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            return await (await conn.execute(query, params)).fetchall()

    async def page(self, channel: str, cursor: str, limit: int) -> tuple[list[tuple[str, Entry]], str]:
        rows = await self._rows(
            f"SELECT key, data, stream_offset, info, tags FROM {self.base}_map_state WHERE channel = %s AND key > %s "
            f"ORDER BY key LIMIT %s", (channel, cursor, limit + 1))
        more = len(rows) > limit
        out = [(key, Entry(bytes(data), int(offset), _info(info), tags)) for key, data, offset, info, tags
               in rows[:limit]]
        return out, (out[-1][0] if more and out else "")

    async def touch(self, channel: str, key: str, key_ttl: float) -> bool:
        """Prolong a key's TTL (map presence refreshes): no stream entry; False if it is not there."""
        async with self._conn() as conn:
            cursor = await conn.execute(
                f"UPDATE {self.base}_map_state SET expires_at = CASE WHEN %s > interval '0' THEN now() + %s END "
                f"WHERE channel = %s AND key = %s",
                (_interval(key_ttl), _interval(key_ttl), channel, key))
            return bool(cursor.rowcount > 0)

    async def expired(self, batch: int) -> list[tuple[str, str]]:
        rows = await self._rows(f"SELECT channel, key FROM {self.base}_map_state WHERE expires_at <= now() "
                                f"ORDER BY expires_at LIMIT %s", (batch,))
        return [(channel, key) for channel, key in rows]

    async def count(self, channel: str) -> int:
        rows = await self._rows(f"SELECT count(*) FROM {self.base}_map_state WHERE channel = %s", (channel,))
        return int(rows[0][0])

    async def clear(self, channel: str) -> None:
        async with self._conn() as conn:
            await conn.execute(f"DELETE FROM {self.base}_map_state WHERE channel = %s", (channel,))

