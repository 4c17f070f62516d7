"""``client.subscribe_to_user_personal_channel`` (Centrifugo v6) through the real SDKs: every authenticated
connection is subscribed server-side to ``<namespace>:#<user>``, with join pushes where the namespace forces
them, and ``single_connection`` closes the user's other connections (3504) on every node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import JsFactory, PyFactory, ServerFactory

from node.config_load import load
from node.errors import ConfigError


def personal(single: bool, namespace: str = "personal") -> dict[str, Any]:
    return {
        "client": {"subscribe_to_user_personal_channel": {
            "enabled": True, "personal_channel_namespace": namespace, "single_connection": single}},
        "channel": {"namespaces": [{"name": "personal", "presence": True, "join_leave": True,
                                    "force_push_join_leave": True}]},
    }


async def test_personal_channel_subscription_publications_and_join_push(
        server_factory: ServerFactory, js_factory: JsFactory, py_factory: PyFactory) -> None:
    srv = await server_factory(personal(single=False))
    js = await js_factory(srv)
    await js.call("connect", token=srv.token("alice"), wait=True)
    assert (await js.wait("server_subscribed"))["channel"] == "personal:#alice"
    await srv.api_result("publish", {"channel": "personal:#alice", "data": {"to": "alice"}})
    pub = await js.wait("server_publication")
    assert (pub["channel"], pub["data"]) == ("personal:#alice", {"to": "alice"})
    # A second connection of alice: the namespace forces join pushes, so the first one is told.
    py = await py_factory(srv, "alice")
    assert (await py.wait("server_subscribed")).ctx.channel == "personal:#alice"
    py_id = py.events("connected")[0].ctx.client
    join = await js.wait_event(lambda e: e["event"] == "server_join" and e["info"]["client"] == py_id)
    assert join["channel"] == "personal:#alice" and join["info"]["user"] == "alice"
    stats = await srv.api_result("presence_stats", {"channel": "personal:#alice"})
    assert stats == {"num_clients": 2, "num_users": 1}
    # Anonymous connections get no personal channel.
    assert js.events("disconnected") == []


async def test_single_connection_closes_the_users_other_connections(
        server_factory: ServerFactory, js_factory: JsFactory, py_factory: PyFactory) -> None:
    srv = await server_factory(personal(single=True))
    js = await js_factory(srv)
    await js.call("connect", token=srv.token("bob"), wait=True)
    await js.wait("server_subscribed")
    other = await js_factory(srv)  # another user is not affected
    await other.call("connect", token=srv.token("carol"), wait=True)
    py = await py_factory(srv, "bob")  # bob connects again: the older connection goes
    assert (await js.wait("disconnected"))["code"] == 3504
    assert (await py.wait("server_subscribed")).ctx.channel == "personal:#bob"
    stats = await srv.api_result("presence_stats", {"channel": "personal:#bob"})
    assert stats["num_clients"] == 1
    assert other.events("disconnected") == []


async def test_personal_channel_without_namespace(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    srv = await server_factory({"client": {"subscribe_to_user_personal_channel": {"enabled": True}}})
    py = await py_factory(srv, "dave")
    assert (await py.wait("server_subscribed")).ctx.channel == "#dave"
    await srv.api_result("publish", {"channel": "#dave", "data": {"n": 1}})
    assert (await py.wait("server_publication")).ctx.pub.data == {"n": 1}


@pytest.mark.parametrize(("section", "message"), [
    ({"enabled": True, "personal_channel_namespace": "nope"}, "namespace for user personal channel not found"),
    ({"enabled": True, "single_connection": True, "personal_channel_namespace": "plain"}, "needs presence"),
])
def test_config_is_checked_as_centrifugo_does(tmp_path: Path, section: dict[str, Any], message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"client": {"subscribe_to_user_personal_channel": section},
                                "channel": {"namespaces": [{"name": "plain"}]}}))
    with pytest.raises(ConfigError, match=message):
        load(str(path), {}, {})
