"""The PostgreSQL map broker beyond the shared map scenarios (tests/integration/test_maps.py runs those on it):
an application's own SQL transaction changes a map atomically through ``cf_map_publish``, and a PostgreSQL
that goes down and comes back (a private server: ``initdb`` + ``postgres``) gives bounded errors and a red
/health meanwhile, then recovers by itself — subscribers get what was written while they waited."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from harness import JsFactory, ServerFactory, unique_channel, wait_until
from postgres_server import LOCAL_PG, PostgresServer
from proxy_backends import self_signed
from psycopg_pool import PoolTimeout
from test_maps import MAP_NAMESPACES, _connected, _entries, health_is, subscribed_to_a_new_map

from node.broker.postgres_map import PostgresMapBroker
from node.maps.broker_config import PostgresMapBrokerConfig
from node.models import Publication, PublishOptions, StreamPosition
from node.proxy.config import ProxyTlsConfig


def _config(dsn: str, prefix: str) -> dict[str, Any]:
    return {**MAP_NAMESPACES, "map_broker": {"type": "postgres", "postgres": {"dsn": dsn, "table_prefix": prefix}}}


async def test_an_application_transaction_changes_the_map_atomically(pg_prefix: str, server_factory: ServerFactory,
                                                                     js_factory: JsFactory) -> None:
    server = await server_factory(_config(LOCAL_PG, pg_prefix))
    ch = unique_channel("board:")
    await server.api_result("map_publish", {"channel": ch, "key": "a", "data": {"v": 1}})
    js = await _connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    assert _entries(await js.wait("map_sync", channel=ch)) == {"a": {"v": 1}}
    publish = f"SELECT * FROM {pg_prefix}_map_publish(%s, %s, %s::jsonb, p_key_mode => %s)"
    async with await psycopg.AsyncConnection.connect(LOCAL_PG) as conn:
        async with conn.transaction(force_rollback=True):  # rolled back: no change, nothing delivered
            await conn.execute(publish.encode(), (ch, "rolled_back", '{"v": 0}', None))
        async with conn.transaction():
            await conn.execute(b"CREATE TEMP TABLE orders (id int)")  # the application's own write
            row = await (await conn.execute(publish.encode(), (ch, "b", '{"v": 2}', None))).fetchone()
        # (result_id, channel_offset, epoch, suppressed, suppress_reason, current_data, current_offset)
        assert row is not None and row[3:5] == (False, None)
        exists = await (await conn.execute(publish.encode(), (ch, "a", '{"v": 9}', "if_new"))).fetchone()
        assert exists is not None and exists[3:5] == (True, "key_exists")
    update = await js.wait("map_update", channel=ch, key="b")
    assert update["data"] == {"v": 2} and update["offset"] == row[1]
    state = await server.api_result("map_read_state", {"channel": ch})
    assert sorted(p["key"] for p in state["entries"]) == ["a", "b"]
    assert not [e for e in js.events("map_update") if e["key"] in ("rolled_back", "a")]


@pytest.fixture
def private_pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.destroy()


async def test_postgres_down_and_back(private_pg: PostgresServer, server_factory: ServerFactory,
                                      js_factory: JsFactory) -> None:
    server = await server_factory(_config(private_pg.dsn, "cf"))
    ch, js = await subscribed_to_a_new_map(server, server, js_factory)

    private_pg.stop()
    await wait_until(lambda: health_is(503, server), timeout=15, what="health red")
    # Calls fail within the broker's bound (5 s), not hang: the deadline here only catches a hang.
    reply = await asyncio.wait_for(server.api("map_publish", {"channel": ch, "key": "b", "data": {"v": 2}}), 20)
    assert reply.get("error", {}).get("code") == 100, reply
    reply = await asyncio.wait_for(server.api("map_read_state", {"channel": ch}), 20)
    assert "error" in reply, reply

    private_pg.start()
    await wait_until(lambda: health_is(200, server), timeout=20, what="health green")
    # Written by the application while the node was still finding its way back: delivered all the same.
    private_pg.execute("SELECT * FROM cf_map_publish(%s, 'c', '{\"v\": 3}'::jsonb)", (ch,))
    await server.api_result("map_publish", {"channel": ch, "key": "d", "data": {"v": 4}})
    assert (await js.wait("map_update", channel=ch, key="c", timeout=15))["data"] == {"v": 3}
    assert (await js.wait("map_update", channel=ch, key="d", timeout=15))["data"] == {"v": 4}
    state = await server.api_result("map_read_state", {"channel": ch})
    assert sorted(p["key"] for p in state["entries"]) == ["a", "c", "d"]


class Deliveries:
    """The broker's handler, keeping what it delivers (PostgreSQL map brokers call only this method)."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []

    def handle_publication(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        self.publications.append(pub)


async def test_tls_to_postgresql_checks_the_server_certificate(private_pg: PostgresServer) -> None:
    """``map_broker.postgres.tls``: PEM text for the CA; the connection is encrypted and the server verified."""
    cert, key = self_signed()
    private_pg.stop()
    private_pg.enable_tls(cert, key)
    private_pg.start()
    tls = ProxyTlsConfig(enabled=True, server_ca_pem=cert)
    broker = PostgresMapBroker(PostgresMapBrokerConfig(dsn=private_pg.dsn, tls=tls))
    deliveries = Deliveries()
    await broker.start(deliveries)  # type: ignore[arg-type]
    try:
        await broker.subscribe("m:1")
        await broker.set("m:1", b"1", PublishOptions(history_size=10, history_ttl=60, key="k"), 0)
        await wait_until(lambda: deliveries.publications, what="the change delivered over TLS")
        assert [k for k, _ in (await broker.page("m:1", "", 10))[0]] == ["k"]
        rows = private_pg.execute("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                                  "WHERE s.ssl AND a.datname = 'postgres' AND a.pid <> pg_backend_pid()")
        assert rows[0][0] >= 1, "the broker's connections use TLS"
    finally:
        await broker.close()
    other, _ = self_signed()  # a CA that did not sign the server's certificate
    wrong = PostgresMapBroker(PostgresMapBrokerConfig(dsn=private_pg.dsn, tls=ProxyTlsConfig(
        enabled=True, server_ca_pem=other)))
    with pytest.raises(PoolTimeout):  # the pool cannot open a single connection: the server is not trusted
        await wrong.start(Deliveries())  # type: ignore[arg-type]
    await wrong.close()
