"""The PostgreSQL map broker's SQL functions for applications' own transactions, as Centrifugo's
(internal/pgmapbroker/internal/sql/schema.sql): ``cf_map_publish`` / ``cf_map_remove`` with its arguments and
result columns (conditions checked in its order: idempotency, version, key mode, expected position), the
``_strict`` forms that raise its SQLSTATEs, and a database made by the previous Fugato version upgraded in place
by a node's start. A broker on the local server (tables under a fresh prefix) receives what the SQL wrote."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from harness import wait_until
from postgres_server import LOCAL_PG, drop_pg_schema
from test_map_postgres import Deliveries

from node.broker.postgres_map import PostgresMapBroker
from node.maps.broker_config import PostgresMapBrokerConfig
from node.maps.options import PERMANENT
from node.models import ClientInfo, HistoryOptions, PublishOptions

COLUMNS = ("result_id", "channel_offset", "epoch", "suppressed", "suppress_reason", "current_data", "current_offset")


async def _broker(prefix: str) -> tuple[PostgresMapBroker, Deliveries]:
    broker = PostgresMapBroker(PostgresMapBrokerConfig(dsn=LOCAL_PG, table_prefix=prefix, num_shards=2))
    deliveries = Deliveries()
    await broker.start(deliveries)  # type: ignore[arg-type]
    return broker, deliveries


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, PostgresMapBroker, Deliveries]]:
    prefix = "fgt" + uuid.uuid4().hex[:10]
    broker, deliveries = await _broker(prefix)
    yield prefix, broker, deliveries
    await broker.close()
    drop_pg_schema(LOCAL_PG, prefix)


def _call(prefix: str, fn: str, *args: Any, **named: Any) -> dict[str, Any]:
    """One call in its own transaction, by position then by Centrifugo's argument names."""
    params = ["%s"] * len(args) + [f"p_{name} => %s" for name in named]
    with psycopg.connect(LOCAL_PG, autocommit=True) as conn:
        cur = conn.execute(f"SELECT * FROM {prefix}_map_{fn}({', '.join(params)})".encode(), (*args, *named.values()))
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return {d.name: value for d, value in zip(cur.description, row, strict=True)}


def _reason(row: dict[str, Any]) -> str | None:
    return row["suppress_reason"] if row["suppressed"] else "ok"


async def test_publish_conditions_in_centrifugos_order(pg: tuple[str, PostgresMapBroker, Deliveries]) -> None:
    prefix, broker, deliveries = pg
    ch = "m:" + uuid.uuid4().hex
    await broker.subscribe(ch)

    def publish(value: int, **named: Any) -> dict[str, Any]:
        return _call(prefix, "publish", ch, "k", f'{{"v": {value}}}', **named)

    first = publish(1, key_version=3, idempotency_key="i1")
    assert list(first) == list(COLUMNS) and first["suppressed"] is False and first["suppress_reason"] is None
    assert first["channel_offset"] == 1 and first["result_id"] is not None
    # A replay answers the first result, before any other condition is looked at.
    replay = publish(9, key_version=1, key_mode="if_new", idempotency_key="i1")
    assert (_reason(replay), replay["channel_offset"], replay["epoch"]) == ("idempotency", 1, first["epoch"])
    assert _reason(publish(2, key_version=3, key_mode="if_exists")) == "version", "version before key mode"
    assert _reason(publish(2, key_version=2, key_version_epoch="other")) == "ok", "another version epoch"
    assert _reason(publish(3, key_mode="if_new", expected_offset=99)) == "key_exists", "key mode before position"
    stale = publish(3, expected_offset=1)
    assert (_reason(stale), stale["current_data"], stale["current_offset"]) == ("position_mismatch", {"v": 2}, 2)
    assert (stale["channel_offset"], stale["epoch"]) == (2, first["epoch"]), "a suppressed write: the stream's top"
    assert _reason(publish(3, expected_offset=2, expected_epoch="other")) == "position_mismatch"
    assert _reason(publish(3, expected_offset=2, expected_epoch=first["epoch"], use_delta=True,
                           client_id="c1", user_id="u1", conn_info='{"name": "n"}')) == "ok"
    missing = _call(prefix, "publish", ch, "absent", "1", key_mode="if_exists")
    assert (_reason(missing), missing["channel_offset"]) == ("key_not_found", 3)

    await wait_until(lambda: len(deliveries.publications) >= 3, what="the three changes delivered")
    got = [(p.offset, p.data, p.prev_data, p.info) for p in deliveries.publications]
    assert got == [(1, b'{"v": 1}', None, None), (2, b'{"v": 2}', None, None),
                   (3, b'{"v": 3}', b'{"v": 2}', ClientInfo("c1", "u1", b'{"name": "n"}', None))]
    entries, _ = await broker.page(ch, "", 10)
    assert [(k, e.data, e.offset) for k, e in entries] == [("k", b'{"v": 3}', 3)]


async def test_remove_conditions_and_stream_bounds(pg: tuple[str, PostgresMapBroker, Deliveries]) -> None:
    prefix, broker, deliveries = pg
    ch = "m:" + uuid.uuid4().hex
    await broker.subscribe(ch)
    # Written by the node first: an application's change that names no bounds keeps the channel's.
    opts = PublishOptions(history_size=7, history_ttl=90, history_meta_ttl=3600, key="k", tags={"t": "x"})
    await broker.set(ch, b'"a"', opts, 0)
    assert _reason(_call(prefix, "remove", ch, "k", None, 5)) == "position_mismatch", "expected offset 5, is 1"
    removed = _call(prefix, "remove", ch, "k", expected_offset=1, idempotency_key="r1", user_id="u")
    assert _reason(removed) == "ok" and removed["channel_offset"] == 2
    again = _call(prefix, "remove", ch, "k", idempotency_key="r1")
    assert (_reason(again), again["channel_offset"]) == ("idempotency", 2)
    assert _reason(_call(prefix, "remove", ch, "k")) == "key_not_found"
    await wait_until(lambda: len(deliveries.publications) >= 2, what="the removal delivered")
    removal = deliveries.publications[1]
    assert (removal.removed, removal.key, removal.tags, removal.info) == (True, "k", {"t": "x"}, ClientInfo("", "u"))
    with psycopg.connect(LOCAL_PG) as conn:
        row = conn.execute(f"SELECT stream_size, stream_ttl FROM {prefix}_map_meta WHERE channel = %s".encode(),
                           (ch,)).fetchone()
    assert row == (7, timedelta(seconds=90))


async def test_strict_forms_raise_centrifugos_sqlstates(pg: tuple[str, PostgresMapBroker, Deliveries]) -> None:
    prefix, broker, _ = pg
    ch = "m:" + uuid.uuid4().hex
    row = _call(prefix, "publish_strict", ch, "k", '"a"', key_version=2, idempotency_key="i")
    assert list(row) == ["result_id", "channel_offset", "epoch"] and row["channel_offset"] == 1
    cases = [("publish_strict", {"key_mode": "if_new"}, "23505"), ("publish_strict", {"key_version": 1}, "40001"),
             ("publish_strict", {"idempotency_key": "i"}, "23505"), ("publish_strict", {"expected_offset": 5}, "40001"),
             ("remove_strict", {"expected_offset": 5}, "P0002")]
    for fn, named, sqlstate in cases:
        args = (ch, "k", '"b"') if fn == "publish_strict" else (ch, "k")
        with pytest.raises(psycopg.Error) as raised:
            _call(prefix, fn, *args, **named)
        assert raised.value.sqlstate == sqlstate, (fn, named)
    # The application's transaction rolls back with the failed write.
    with psycopg.connect(LOCAL_PG) as conn, pytest.raises(psycopg.errors.NoDataFound), conn.transaction():
        conn.execute(f"SELECT * FROM {prefix}_map_publish(%s, 'k2', '\"c\"')".encode(), (ch,))
        conn.execute(f"SELECT * FROM {prefix}_map_remove_strict(%s, 'absent')".encode(), (ch,))
    assert [k for k, _ in (await broker.page(ch, "", 10))[0]] == ["k"]


async def test_if_new_keepalive_refreshes_the_key_ttl(pg: tuple[str, PostgresMapBroker, Deliveries]) -> None:
    prefix, _, _ = pg
    ch = "m:" + uuid.uuid4().hex
    hour, day = timedelta(hours=1), timedelta(days=1)
    _call(prefix, "publish", ch, "k", '"a"', key_ttl=timedelta(seconds=60), meta_ttl=hour)

    def keepalive(refresh: bool) -> tuple[timedelta, timedelta, bytes]:
        row = _call(prefix, "publish", ch, "k", '"b"', key_ttl=hour, meta_ttl=day, key_mode="if_new",
                    refresh_ttl_on_suppress=refresh)
        assert _reason(row) == "key_exists"
        with psycopg.connect(LOCAL_PG) as conn:
            left = conn.execute(f"SELECT s.expires_at - now(), m.expires_at - now(), s.data FROM {prefix}_map_state s "
                                f"JOIN {prefix}_map_meta m USING (channel) WHERE channel = %s".encode(),
                                (ch,)).fetchone()
        assert left is not None
        return left[0], left[1], bytes(left[2])

    key_left, meta_left, _ = keepalive(False)
    assert key_left <= timedelta(seconds=60) and meta_left <= hour, "without refresh_ttl_on_suppress: unchanged"
    key_left, meta_left, data = keepalive(True)
    assert key_left > timedelta(minutes=30) and meta_left > timedelta(hours=12) and data == b'"a"'


async def test_publish_refuses_a_meta_ttl_that_keys_outlive(pg: tuple[str, PostgresMapBroker, Deliveries]) -> None:
    """As Centrifugo's cf_map_publish: an exception (SQLSTATE P0001) when p_meta_ttl is shorter than p_key_ttl,
    or set for permanent keys (no p_key_ttl); nothing is written."""
    prefix, _, _ = pg
    ch = "m:" + uuid.uuid4().hex
    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    for fn, named in [("publish", {"key_ttl": hour, "meta_ttl": minute}), ("publish", {"meta_ttl": hour}),
                      ("publish_strict", {"key_ttl": hour, "meta_ttl": minute})]:
        with pytest.raises(psycopg.errors.RaiseException):
            _call(prefix, fn, ch, "k", '"a"', **named)
    with psycopg.connect(LOCAL_PG) as conn:
        row = conn.execute(f"SELECT count(*) FROM {prefix}_map_meta WHERE channel = %s".encode(), (ch,)).fetchone()
    assert row == (0,), "a refused call writes nothing"
    assert _reason(_call(prefix, "publish", ch, "k", '"a"', key_ttl=hour, meta_ttl=hour)) == "ok"
    assert _reason(_call(prefix, "publish", ch, "j", '"a"', key_ttl=minute)) == "ok", "no meta_ttl: the default"


def _meta_expiry(prefix: str, ch: str) -> Any:
    with psycopg.connect(LOCAL_PG) as conn:
        row = conn.execute(f"SELECT expires_at = 'infinity', CASE WHEN expires_at < 'infinity' THEN "
                           f"expires_at - now() END FROM {prefix}_map_meta WHERE channel = %s".encode(),
                           (ch,)).fetchone()
    assert row is not None
    return "permanent" if row[0] else row[1]


async def test_a_null_meta_ttl_is_a_permanent_meta(pg: tuple[str, PostgresMapBroker, Deliveries]) -> None:
    """As Centrifugo's functions: without p_meta_ttl a channel's meta never expires; a change without it keeps
    the expiry a channel already has. The node's persistent maps (no map.meta_ttl) ask for a permanent one."""
    prefix, broker, _ = pg
    hour = timedelta(hours=1)
    ch = "m:" + uuid.uuid4().hex
    assert _reason(_call(prefix, "publish", ch, "k", '"a"')) == "ok"
    assert _meta_expiry(prefix, ch) == "permanent"
    assert _reason(_call(prefix, "publish", ch, "k", '"b"', key_ttl=hour, meta_ttl=hour)) == "ok"
    assert timedelta(minutes=59) < _meta_expiry(prefix, ch) <= hour
    assert _reason(_call(prefix, "remove", ch, "k")) == "ok"
    assert timedelta(minutes=59) < _meta_expiry(prefix, ch) <= hour, "no p_meta_ttl: the expiry it had"
    # The node's own writes and reads: a negative history_meta_ttl (PERMANENT) is a permanent meta.
    mine = "m:" + uuid.uuid4().hex
    opts = PublishOptions(history_size=10, history_ttl=60, history_meta_ttl=PERMANENT, key="k")
    assert not (await broker.set(mine, b'"a"', opts, 0.0)).suppressed
    assert _meta_expiry(prefix, mine) == "permanent"
    read = "m:" + uuid.uuid4().hex
    top = await broker.history(read, HistoryOptions(limit=0, history_meta_ttl=PERMANENT))
    assert top.position.epoch and _meta_expiry(prefix, read) == "permanent"


OLD_FUNCTIONS = """
CREATE FUNCTION {b}_map_apply(TEXT, TEXT, TEXT, BYTEA, TEXT, INTERVAL, INTERVAL, INTEGER, INTERVAL, BYTEA, JSONB,
    BIGINT, TEXT, TEXT, INTERVAL, BOOLEAN)
RETURNS TABLE (channel_offset BIGINT, epoch TEXT, suppressed BOOLEAN, suppress_reason TEXT)
LANGUAGE sql AS $$ SELECT 0::BIGINT, ''::TEXT, FALSE, ''::TEXT $$;
CREATE FUNCTION {b}_map_publish(p_channel TEXT, p_key TEXT, p_data JSONB, p_key_mode TEXT DEFAULT NULL,
    p_key_ttl INTERVAL DEFAULT NULL, p_meta_ttl INTERVAL DEFAULT NULL, p_stream_size INTEGER DEFAULT 100,
    p_stream_ttl INTERVAL DEFAULT '1 minute', p_tags JSONB DEFAULT NULL)
RETURNS TABLE (channel_offset BIGINT, epoch TEXT, suppressed BOOLEAN, suppress_reason TEXT)
LANGUAGE sql AS $$ SELECT 0::BIGINT, ''::TEXT, FALSE, ''::TEXT $$;
CREATE FUNCTION {b}_map_remove(p_channel TEXT, p_key TEXT, p_meta_ttl INTERVAL DEFAULT NULL,
    p_stream_size INTEGER DEFAULT 100, p_stream_ttl INTERVAL DEFAULT '1 minute')
RETURNS TABLE (channel_offset BIGINT, epoch TEXT, suppressed BOOLEAN, suppress_reason TEXT)
LANGUAGE sql AS $$ SELECT 0::BIGINT, ''::TEXT, FALSE, ''::TEXT $$;
"""


async def test_a_database_of_the_previous_version_is_upgraded() -> None:
    """The previous version's tables (no ``stream_ttl`` on meta) and functions (other signatures, which would
    make calls ambiguous if they stayed) with its data: a node's start brings them to this version."""
    prefix = "fgt" + uuid.uuid4().hex[:10]
    broker, _ = await _broker(prefix)
    try:
        opts = PublishOptions(history_size=10, history_ttl=60, history_meta_ttl=3600, key="kept")
        await broker.set("m:old", b'"old"', opts, 0)
        await broker.close()
        with psycopg.connect(LOCAL_PG, autocommit=True) as conn:  # back to the previous version's shape
            for fn in ("publish", "remove", "publish_strict", "remove_strict", "apply", "info", "msgpack_len",
                       "stream_size", "stream_ttl"):
                conn.execute(f"DROP FUNCTION {prefix}_map_{fn}".encode())
            conn.execute(f"ALTER TABLE {prefix}_map_meta DROP COLUMN stream_ttl".encode())
            conn.execute(OLD_FUNCTIONS.format(b=prefix).encode())
        broker, deliveries = await _broker(prefix)
        with psycopg.connect(LOCAL_PG) as conn:
            names = conn.execute(b"SELECT proname, pronargs FROM pg_proc WHERE proname LIKE %s ORDER BY 1",
                                 (f"{prefix}_map_%",)).fetchall()
        assert [(n.removeprefix(prefix), a) for n, a in names if "publish" in n or "remove" in n or "apply" in n] \
            == [("_map_apply", 19), ("_map_publish", 22), ("_map_publish_strict", 22), ("_map_remove", 12),
                ("_map_remove_strict", 12)]
        await broker.subscribe("m:old")
        row = _call(prefix, "publish", "m:old", "new", '"new"', key_mode="if_new")
        assert (_reason(row), row["channel_offset"]) == ("ok", 2), "the channel's offsets go on"
        await wait_until(lambda: deliveries.publications, what="the new change delivered")
        entries, _ = await broker.page("m:old", "", 10)
        assert [(k, e.data) for k, e in entries] == [("kept", b'"old"'), ("new", b'"new"')]
    finally:
        await broker.close()
        drop_pg_schema(LOCAL_PG, prefix)
