"""Map presence (``map_clients`` / ``map_users`` namespaces and the ``map_*_presence_channel_prefix`` options)
through the real centrifuge-js SDK's newMapClientsSubscription / newMapUsersSubscription: subscribers of a
channel appear as keys of its presence maps and disappear as removals (client entries at once, user entries
by their TTL), across nodes with Redis Cluster, and the bad requests get Centrifugo's errors."""

from __future__ import annotations

from typing import Any

import pytest
from harness import JsFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsCallError, JsClient

PRESENCE: dict[str, Any] = {
    "client": {"presence_update_interval": "500ms"},
    "channel": {
        "namespaces": [
            # Any subscription type names its presence maps: a map channel and a stream channel here.
            {"name": "game", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map_clients_presence_channel_prefix": "clients:", "map_users_presence_channel_prefix": "users:",
             "map": {"mode": "ephemeral", "key_ttl": "60s"}},
            {"name": "chat", "allow_subscribe_for_client": True,
             "map_clients_presence_channel_prefix": "clients:", "map_users_presence_channel_prefix": "users:"},
            {"name": "clients", "subscription_type": "map_clients", "allow_subscribe_for_client": True,
             "map": {"mode": "recoverable", "key_ttl": "60s", "min_page_size": 1}},
            {"name": "users", "subscription_type": "map_users", "allow_subscribe_for_client": True,
             "map": {"mode": "recoverable", "key_ttl": "2s", "min_page_size": 1}},
        ],
    },
}


@pytest.fixture
async def server(engine_section: dict[str, Any], server_factory: ServerFactory) -> ServerProcess:
    return await server_factory({**PRESENCE, **engine_section})


@pytest.fixture
async def two_nodes(cluster_section: dict[str, Any], server_factory: ServerFactory) -> tuple[ServerProcess, ...]:
    config = {**PRESENCE, **cluster_section}
    return await server_factory(config, name="node-a"), await server_factory(config, name="node-b")


async def _connected(server: ServerProcess, js_factory: JsFactory, user: str) -> tuple[JsClient, str]:
    js = await js_factory(server)
    client_id = (await js.call("connect", token=server.token(user), wait=True))["client"]
    return js, client_id


def _mirror(js: JsClient, channel: str) -> dict[str, Any]:
    """The watcher's copy of a presence map: its last sync, then the updates after it, applied by key."""
    syncs = [e for e in js.events("map_sync") if e["channel"] == channel]
    state = {e["key"]: e for e in syncs[-1]["entries"]} if syncs else {}
    for e in js.events("map_update"):
        if e["channel"] != channel:
            continue
        if e.get("removed"):
            state.pop(e["key"], None)
        else:
            state[e["key"]] = e
    return state


@pytest.mark.parametrize("topic", ["game", "chat"])
async def test_subscribers_appear_in_the_clients_and_users_maps(server: ServerProcess, js_factory: JsFactory,
                                                                topic: str) -> None:
    ch = unique_channel(f"{topic}:")
    clients_ch, users_ch = f"clients:{ch}", f"users:{ch}"
    watcher, _ = await _connected(server, js_factory, "watcher")
    alice1, alice1_id = await _connected(server, js_factory, "alice")
    await alice1.call("map_subscribe" if topic == "game" else "subscribe", channel=ch, wait=True)
    # A watcher subscribing after alice gets her in the state; the ones joining later arrive live.
    await watcher.call("map_subscribe", kind="clients", channel=clients_ch, wait=True)
    await watcher.call("map_subscribe", kind="users", channel=users_ch, wait=True)
    clients = _mirror(watcher, clients_ch)
    assert list(clients) == [alice1_id] and clients[alice1_id]["info"]["user"] == "alice"
    assert clients[alice1_id]["info"]["client"] == alice1_id
    assert list(_mirror(watcher, users_ch)) == ["alice"]
    alice2, alice2_id = await _connected(server, js_factory, "alice")
    bob, bob_id = await _connected(server, js_factory, "bob")
    for js in (alice2, bob):
        await js.call("map_subscribe" if topic == "game" else "subscribe", channel=ch, wait=True)
    await wait_until(lambda: set(_mirror(watcher, clients_ch)) == {alice1_id, alice2_id, bob_id},
                     what="three clients present")
    await wait_until(lambda: set(_mirror(watcher, users_ch)) == {"alice", "bob"}, what="two users present")
    # A user with two connections is one key: the second connection announced nothing new.
    assert [e["key"] for e in watcher.events("map_update") if e["channel"] == users_ch] == ["bob"]

    # A client entry goes as soon as its subscription ends (unsubscribe or disconnect).
    await alice1.call("map_unsubscribe" if topic == "game" else "unsubscribe", channel=ch)
    await watcher.wait("map_update", channel=clients_ch, key=alice1_id, removed=True)
    await bob.call("disconnect")
    await watcher.wait("map_update", channel=clients_ch, key=bob_id, removed=True)
    # A user entry stays while the user's subscriptions refresh it, and expires key_ttl after the last one:
    # bob's goes; alice's (older, so gone first without her refreshes) stays, alice2 being still subscribed.
    await watcher.wait("map_update", channel=users_ch, key="bob", removed=True, timeout=15)
    assert set(_mirror(watcher, users_ch)) == {"alice"}
    state = await server.api_result("map_read_state", {"channel": users_ch})
    assert [e["key"] for e in state["entries"]] == ["alice"]
    assert set(_mirror(watcher, clients_ch)) == {alice2_id}


async def test_presence_maps_span_nodes(two_nodes: tuple[ServerProcess, ...], js_factory: JsFactory) -> None:
    a, b = two_nodes
    ch = unique_channel("game:")
    watcher, _ = await _connected(b, js_factory, "watcher")
    await watcher.call("map_subscribe", kind="clients", channel=f"clients:{ch}", wait=True)
    player, player_id = await _connected(a, js_factory, "player")
    await player.call("map_subscribe", channel=ch, wait=True)
    joined = await watcher.wait("map_update", channel=f"clients:{ch}", key=player_id)
    assert joined["info"]["user"] == "player"
    await player.call("disconnect")
    await watcher.wait("map_update", channel=f"clients:{ch}", key=player_id, removed=True)
    assert (await b.api_result("map_stats", {"channel": f"clients:{ch}"}))["num_keys"] == 0


async def test_bad_presence_requests_get_centrifugo_errors(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("game:")
    js, _ = await _connected(server, js_factory, "mallory")
    # A subscription of another type than its namespace's: 103 (a map one to a map_clients channel, a
    # map_clients one to a map channel).
    await js.call("map_subscribe", channel=f"clients:{ch}")
    assert (await js.wait("map_unsubscribed", channel=f"clients:{ch}"))["code"] == 103
    await js.call("map_subscribe", kind="users", channel=ch)
    assert (await js.wait("map_unsubscribed", channel=ch))["code"] == 103
    # Presence maps are the server's: clients may not write into them.
    with pytest.raises(JsCallError) as denied:
        await js.call("map_publish", channel=f"clients:{ch}", key="fake", data={}, via="client")
    assert denied.value.code == 103
    # The connection stays usable.
    await js.call("map_subscribe", kind="users", channel=f"users:{ch}", wait=True)
    await js.wait("map_sync", channel=f"users:{ch}")
