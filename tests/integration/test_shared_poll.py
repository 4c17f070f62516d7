"""Shared poll subscriptions (Centrifugo 6.8) through the real centrifuge-js SDK against a real backend started
by the test: an aiohttp app answering the shared poll refresh proxy and signing tracked keys (the HMAC of
Centrifugo's docs), and a grpc.aio ``CentrifugoProxy`` for the GRPC refresh proxy.

Covered: data of tracked keys arrives at once (cold key poll), then only changes; one refresh call per cycle
batches every key tracked on the node whatever the number of subscribers; versioned and versionless modes;
removals; untrack; ``max_keys_per_connection`` and other bad input with Centrifugo's codes; expired and forged
signatures; a backend that is down, slow, answers 5xx or garbage, and recovers; two nodes over Redis Cluster,
each polling for its own connections (Centrifugo OSS: O(unique keys x nodes)); removals and published data
byte for byte as centrifuge writes them; the HTTP-streaming and SSE emulation; unidirectional transports,
which get no shared poll."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from harness import REPO, JsFactory, ServerFactory, ServerProcess, free_port, unique_channel, wait_until
from jsclient import JsClient
from proxy_backends import Call, GrpcBackend, HttpBackend
from test_protocol_raw import raw
from test_transports import emulated_client, uni_stream

from node.api.proto import api_pb2
from node.api.proto.api_pb2_grpc import CentrifugoApiStub
from node.protocol import client_pb2
from node.protocol.proto import split_delimited, varint

HMAC_KEY = "shared-poll-test-secret"
HOOK = "shared_poll_refresh"


def make_signature(secret: str, user: str, channel: str, keys: list[str], ttl: int, now: int | None = None) -> str:
    """The application backend's side, as Centrifugo's docs give it."""
    now = int(time.time()) if now is None else now
    exp = now + ttl
    kh = hashlib.sha256("\x00".join(keys).encode()).hexdigest()
    payload = f"{now}\0{exp}\0{user}\0{channel}\0{kh}"
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return f"{now}:{exp}:{mac}"


class Store:
    """The application's data: key -> (data, version). ``answer`` is the refresh proxy handler. ``prev_data``:
    a versioned answer also carries the data of the version the node asked with (the base of fossil deltas)."""

    def __init__(self, *, versioned: bool = False, grpc: bool = False, prev_data: bool = False) -> None:
        self.items: dict[str, tuple[Any, int]] = {}
        self.history: dict[tuple[str, int], Any] = {}  # (key, version) -> data
        self.removed: set[str] = set()
        self.versioned = versioned
        self.grpc = grpc
        self.prev_data = prev_data
        self.sign_ttl = 3600
        self.epoch = ""

    def set(self, key: str, data: Any, version: int | None = None) -> None:
        """``version``: the key's version from now on (a publisher that restarted counts from 1 again)."""
        old = self.items.get(key)
        version = (old[1] if old else 0) + 1 if version is None else version
        self.items[key] = (data, version)
        self.history[(key, version)] = data

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        out = []
        for item in body.get("items", []):
            key = item["key"]
            if key in self.removed:
                out.append({"key": key, "removed": True})
            elif key in self.items:
                data, version = self.items[key]
                entry: dict[str, Any] = {"key": key}
                asked = int(item.get("version", 0))
                if not self.versioned or asked < version:  # unchanged data left out
                    raw_data = json.dumps(data)
                    entry["data"] = base64.b64encode(raw_data.encode()).decode() if self.grpc else data
                    if self.prev_data and asked and (key, asked) in self.history:
                        prev = self.history[(key, asked)]
                        entry["prev_data"] = base64.b64encode(json.dumps(prev).encode()).decode() if self.grpc else prev
                if self.versioned:
                    entry["version"] = version
                out.append(entry)
        return {"result": {"items": out, "epoch": self.epoch}}

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        keys = [k for k in body["keys"] if k not in self.removed]
        return {"keys": keys, "signature": make_signature(HMAC_KEY, body["user"], body["channel"], keys,
                                                          self.sign_ttl)}


def config(endpoint: str, *, mode: str = "versionless", interval: str = "200ms", max_keys: int = 5000,
           grpc: bool = False, timeout: str = "1s") -> dict[str, Any]:
    """Centrifugo's documented minimal example: the default refresh proxy, or a named one (GRPC)."""
    cfg: dict[str, Any] = {"shared_poll": {"hmac_secret_key": HMAC_KEY}, "prometheus": {"enabled": True}}
    ns: dict[str, Any] = {"name": "votes", "subscription_type": "shared_poll", "allow_subscribe_for_client": True,
                          "shared_poll": {"refresh_interval": interval, "max_keys_per_connection": max_keys,
                                          "mode": mode}}
    if grpc:
        cfg["proxies"] = [{"name": "poll_backend", "endpoint": endpoint, "timeout": timeout}]
        ns["shared_poll"]["proxy_name"] = "poll_backend"
        cfg["channel"] = {"namespaces": [ns]}
    else:
        cfg["channel"] = {"proxy": {"shared_poll_refresh": {"endpoint": endpoint, "timeout": timeout}},
                          "namespaces": [ns]}
    return cfg


def engine(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    cluster = request.getfixturevalue("redis_cluster")
    return {"engine": {"type": "redis", "redis": {"address": [cluster.url],
                                                  "prefix": request.getfixturevalue("redis_prefix")}}}


@pytest.fixture
async def backend() -> AsyncIterator[HttpBackend]:
    async with HttpBackend() as b:
        yield b


def wire(backend: HttpBackend, store: Store) -> None:
    backend.answers[HOOK] = store.answer
    backend.answers["sign"] = store.sign


@contextlib.asynccontextmanager
async def grpc_refresh(backend: HttpBackend, store: Store) -> AsyncIterator[GrpcBackend]:
    """A GRPC refresh proxy answering from ``store``; the HTTP ``backend`` still signs tracks."""
    backend.answers["sign"] = store.sign
    async with GrpcBackend() as grpc_backend:
        grpc_backend.answers[HOOK] = store.answer
        yield grpc_backend


async def subscriber(server: ServerProcess, js_factory: JsFactory, backend: HttpBackend, channel: str,
                     user: str = "alice", protocol: str = "json", delta: str | None = None) -> JsClient:
    js = await js_factory(server, {"protocol": protocol, "trace": protocol == "json"})
    await js.call("connect", token=server.token(user), wait=True)
    extra = {} if delta is None else {"delta": delta}
    await js.call("sp_subscribe", channel=channel, signUrl=backend.endpoint("sign"), signUser=user, wait=True,
                  **extra)
    return js


def data(value: Any) -> Any:
    """The protobuf build hands JSON payloads to the application as bytes."""
    if isinstance(value, dict) and "__bytes__" in value:
        return json.loads(base64.b64decode(value["__bytes__"]))
    return value


def updates(js: JsClient, key: str) -> list[Any]:
    return [data(e["data"]) for e in js.events("sp_update") if e["key"] == key and not e.get("removed")]


def removal_seen(event: dict[str, Any]) -> dict[str, Any]:
    """An ``sp_update`` event as the application got it (the driver's bookkeeping left out)."""
    return {k: v for k, v in event.items() if k not in ("event", "seq")}


def sdk_removal(channel: str, key: str, protocol: str) -> dict[str, Any]:
    """The update event centrifuge-js makes of centrifuge's removal, Publication{key, removed: true}: over JSON
    no data and no version at all (an undefined ``data``, not null); the protobuf build fills in its decoder's
    defaults, empty bytes and version 0."""
    if protocol == "json":
        return {"channel": channel, "key": key, "removed": True}
    return {"channel": channel, "key": key, "removed": True, "data": {"__bytes__": ""}, "version": 0}


def polls(backend: HttpBackend | GrpcBackend, hook: str = HOOK) -> list[Call]:
    return backend.of(hook)


def keys_of(call: Call) -> list[str]:
    return sorted(item["key"] for item in call.body.get("items", []))


async def cycles(backend: HttpBackend | GrpcBackend, n: int, hook: str = HOOK) -> None:
    """Wait until ``n`` more refresh calls reached the backend."""
    target = len(backend.of(hook)) + n
    await wait_until(lambda: len(backend.of(hook)) >= target, timeout=15, what=f"{n} refresh calls")


@pytest.fixture(params=["memory", "redis_cluster"])
def engine_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return engine(request)


@pytest.fixture(params=["json", "protobuf"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_tracked_keys_get_data_then_only_changes_in_one_call_per_cycle(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend,
        engine_config: dict[str, Any], protocol: str) -> None:
    store = Store()
    wire(backend, store)
    for key in ("p1", "p2", "p3", "p4"):
        store.set(key, {"votes": 0, "key": key})
    srv = await server_factory({**config(backend.endpoint(HOOK)), **engine_config})
    ch = unique_channel("votes:")
    clients = [await subscriber(srv, js_factory, backend, ch, protocol=protocol) for _ in range(3)]
    # Overlapping interests: the node polls the union of them.
    tracked = (["p1", "p2"], ["p2", "p3"], ["p3", "p4"])
    for js, keys in zip(clients, tracked, strict=True):
        await js.call("sp_track", channel=ch, keys=keys)
    for js, keys in zip(clients, tracked, strict=True):
        for key in keys:  # the cold keys are polled at once
            await wait_until(lambda js=js, key=key: updates(js, key) == [{"votes": 0, "key": key}],
                             what=f"first data of {key}")
    # Every regular cycle is one call with every key tracked on the node, not a call per subscriber.
    await wait_until(lambda: keys_of(polls(backend)[-1]) == ["p1", "p2", "p3", "p4"], what="one call, all keys")
    await cycles(backend, 3)
    assert all(call.body["channel"] == ch and "version" not in call.body["items"][0] for call in polls(backend))
    # Unchanged data was not pushed again.
    assert [len(updates(js, k)) for js, keys in zip(clients, tracked, strict=True) for k in keys] == [1] * 6
    store.set("p2", {"votes": 5, "key": "p2"})
    for js in clients[:2]:
        await wait_until(lambda js=js: updates(js, "p2")[-1:] == [{"votes": 5, "key": "p2"}], what="p2 change")
    versions = [e["version"] for e in clients[0].events("sp_update") if e["key"] == "p2"]
    assert len(versions) == 2 and versions[1] > versions[0] > 0
    assert updates(clients[2], "p2") == []  # not tracking it


async def test_untrack_and_unsubscribe_shrink_the_polled_keys(server_factory: ServerFactory, js_factory: JsFactory,
                                                              backend: HttpBackend, protocol: str) -> None:
    store = Store()
    wire(backend, store)
    store.set("a", 1)
    store.set("b", 2)
    srv = await server_factory(config(backend.endpoint(HOOK)))
    ch = unique_channel("votes:")
    js = await subscriber(srv, js_factory, backend, ch, protocol=protocol)
    other = await subscriber(srv, js_factory, backend, ch, user="bob")
    await js.call("sp_track", channel=ch, keys=["a", "b"])
    await other.call("sp_track", channel=ch, keys=["b"])
    await wait_until(lambda: updates(js, "b") and updates(other, "b"), what="data")
    await js.call("sp_untrack", channel=ch, keys=["a"])
    await wait_until(lambda: keys_of(polls(backend)[-1]) == ["b"], timeout=15, what="a no longer polled")
    store.set("a", 10)
    store.set("b", 20)
    await wait_until(lambda: updates(js, "b")[-1:] == [20] and updates(other, "b")[-1:] == [20], what="b change")
    assert updates(js, "a") == [1]
    # Unsubscribing drops the connection's keys; subscribing again starts from nothing tracked.
    await js.call("sp_unsubscribe", channel=ch)
    await js.call("sp_subscribe", channel=ch, wait=True)
    assert await js.call("sp_tracked", channel=ch) == []
    await js.call("sp_track", channel=ch, keys=["a"])
    await wait_until(lambda: updates(js, "a")[-1:] == [10], what="a tracked again")
    await wait_until(lambda: keys_of(polls(backend)[-1]) == ["a", "b"], timeout=15, what="a polled again")


async def test_versioned_mode_sends_versions_pushes_newer_ones_and_removals(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend, protocol: str) -> None:
    store = Store(versioned=True)
    wire(backend, store)
    store.set("x", {"v": 1})
    store.set("y", {"v": 1})
    srv = await server_factory(config(backend.endpoint(HOOK), mode="versioned"))
    ch = unique_channel("votes:")
    js = await subscriber(srv, js_factory, backend, ch, protocol=protocol)
    await js.call("sp_track", channel=ch, keys=["x", "y"])
    await wait_until(lambda: updates(js, "x") and updates(js, "y"), what="first data")
    await cycles(backend, 2)
    # The node asks with the versions it holds; the backend leaves unchanged data out.
    last = {i["key"]: int(i["version"]) for i in polls(backend)[-1].body["items"]}
    assert last == {"x": 1, "y": 1}
    store.set("x", {"v": 2})
    store.set("x", {"v": 3})
    await wait_until(lambda: updates(js, "x")[-1:] == [{"v": 3}], what="x at version 3")
    got = [(e["key"], e.get("version")) for e in js.events("sp_update")]
    assert got.count(("x", 3)) == 1 and ("x", 2) not in got and got.count(("y", 1)) == 1
    store.removed.add("y")
    removal = await js.wait("sp_update", key="y", removed=True)
    assert removal_seen(removal) == sdk_removal(ch, "y", protocol)
    await wait_until(lambda: "y" not in keys_of(polls(backend)[-1]), timeout=15, what="y no longer polled")
    assert await js.call("sp_tracked", channel=ch) == ["x"]


async def test_grpc_refresh_proxy_named_in_the_namespace(server_factory: ServerFactory, js_factory: JsFactory,
                                                         backend: HttpBackend) -> None:
    store = Store(grpc=True)
    store.set("g1", {"price": 10})
    async with grpc_refresh(backend, store) as grpc_backend:
        srv = await server_factory(config(grpc_backend.endpoint, grpc=True))
        ch = unique_channel("votes:")
        js = await subscriber(srv, js_factory, backend, ch, protocol="protobuf")
        await js.call("sp_track", channel=ch, keys=["g1"])
        await wait_until(lambda: updates(js, "g1") == [{"price": 10}], what="data over GRPC")
        store.set("g1", {"price": 11})
        await wait_until(lambda: updates(js, "g1")[-1:] == [{"price": 11}], what="change over GRPC")
        assert polls(grpc_backend)[-1].body == {"channel": ch, "items": [{"key": "g1"}]}


async def test_bad_tracks_get_centrifugo_codes_and_nothing_else_breaks(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend) -> None:
    store = Store()
    wire(backend, store)
    for i in range(5):
        store.set(f"k{i}", i)
    srv = await server_factory(config(backend.endpoint(HOOK), max_keys=3))
    ch = unique_channel("votes:")
    js = await subscriber(srv, js_factory, backend, ch)
    # Too many keys for one connection: 106, the SDK untracks them (removal updates), the subscription stays.
    await js.call("sp_track", channel=ch, keys=["k0", "k1", "k2", "k3"])
    err = await js.wait("sp_error", channel=ch, type="track")
    assert err["error"]["code"] == 106
    await wait_until(lambda: len([e for e in js.events("sp_update") if e.get("removed")]) == 4, what="untracked")
    await js.call("sp_track", channel=ch, keys=["k0", "k1"])
    await wait_until(lambda: updates(js, "k0") == [0] and updates(js, "k1") == [1], what="data within the limit")
    # A forged signature: 103; a stale one (past the 5 s grace): 109, after which the SDK asks the backend
    # for a fresh signature and the keys are tracked.
    forged = make_signature("wrong-secret", "alice", ch, ["k4"], 60)
    await js.call("sp_track", channel=ch, items=[{"key": "k4", "version": 0}], signature=forged)
    assert (await js.wait("sp_error", channel=ch, type="track"))["error"]["code"] == 103
    stale = make_signature(HMAC_KEY, "alice", ch, ["k3"], 1, now=int(time.time()) - 100)
    await js.call("sp_track", channel=ch, items=[{"key": "k3", "version": 0}], signature=stale)
    assert (await js.wait("sp_error", channel=ch, type="track"))["error"]["code"] == 109
    await wait_until(lambda: updates(js, "k3") == [3], what="k3 after a fresh signature")
    assert updates(js, "k4") == []

    # The raw protocol, for what the SDK never sends.
    async with raw(srv) as c:
        await c.connect(srv.token("carol"))
        chan = unique_channel("votes:")
        await c.send({"id": 2, "subscribe": {"channel": chan}})  # a stream subscribe to a shared poll channel
        assert (await c.reply(2))["error"]["code"] == 107
        await c.send({"id": 3, "subscribe": {"channel": unique_channel("chat:"), "type": 4}})
        assert (await c.reply(3))["error"]["code"] == 108
        sig = make_signature(HMAC_KEY, "carol", chan, ["k0"], 60)
        await c.send({"id": 4, "sub_refresh": {"channel": chan, "type": 1,
                                               "track": [{"signature": sig, "items": [{"key": "k0"}]}]}})
        assert (await c.reply(4))["error"]["code"] == 103  # not subscribed
        await c.send({"id": 5, "subscribe": {"channel": chan, "type": 4}})
        reply = (await c.reply(5))["subscribe"]
        assert reply["type"] == 4 and reply["epoch"]
        await c.send({"id": 6, "sub_refresh": {"channel": chan, "type": 1, "track": [{"signature": sig}]}})
        assert (await c.reply(6))["error"]["code"] == 107  # no keys
        await c.send({"id": 7, "sub_refresh": {"channel": chan, "type": 2}})
        assert (await c.reply(7))["error"]["code"] == 107
        long_key = "k" * 2000
        sig = make_signature(HMAC_KEY, "carol", chan, [long_key], 60)
        await c.send({"id": 8, "sub_refresh": {"channel": chan, "type": 1,
                                               "track": [{"signature": sig, "items": [{"key": long_key}]}]}})
        assert (await c.reply(8))["error"]["code"] == 107
        sig = make_signature(HMAC_KEY, "someone-else", chan, ["k0"], 60)
        await c.send({"id": 9, "sub_refresh": {"channel": chan, "type": 1,
                                               "track": [{"signature": sig, "items": [{"key": "k0"}]}]}})
        assert (await c.reply(9))["error"]["code"] == 103  # signed for another user
        sig = make_signature(HMAC_KEY, "carol", chan, ["k0"], 60)
        await c.send({"id": 10, "sub_refresh": {"channel": chan, "type": 1,
                                                "track": [{"signature": sig, "items": [{"key": "k0"}]}]}})
        result = (await c.reply(10))["sub_refresh"]
        assert result["expires"] is True and 0 < result["ttl"] <= 60
        push = await c.recv()
        assert push["push"]["channel"] == chan and push["push"]["pub"]["key"] == "k0"
        assert push["push"]["pub"]["data"] == 0 and push["push"]["pub"]["version"] >= 1
    # The SDK client was not affected.
    store.set("k0", 100)
    await wait_until(lambda: updates(js, "k0")[-1:] == [100], what="k0 change")


@pytest.mark.parametrize("fault", ["5xx", "garbage", "slow", "down"])
async def test_backend_faults_skip_cycles_and_polling_recovers(server_factory: ServerFactory,
                                                               js_factory: JsFactory, fault: str) -> None:
    store = Store()
    store.set("f", {"n": 1})
    signer = HttpBackend()
    async with signer:
        signer.answers["sign"] = store.sign
        poller = HttpBackend()
        await poller.__aenter__()
        try:
            poller.answers[HOOK] = store.answer
            srv = await server_factory(config(poller.endpoint(HOOK), timeout="300ms"))
            ch = unique_channel("votes:")
            js = await subscriber(srv, js_factory, signer, ch)
            if fault == "down":
                await poller.__aexit__()
            else:
                poller.faults[HOOK] = fault
            await js.call("sp_track", channel=ch, keys=["f"])
            if fault != "down":
                await cycles(poller, 3)
            else:
                await wait_until(lambda: _failed(srv), timeout=15, what="failed refresh calls")
            assert updates(js, "f") == []
            # The failures were bounded and counted; the node is healthy and serves its clients.
            await js.call("sp_tracked", channel=ch)
            if fault == "down":
                poller.released.clear()
                await poller.__aenter__()
            else:
                poller.faults.pop(HOOK)
                poller.released.set()
            await wait_until(lambda: updates(js, "f") == [{"n": 1}], timeout=15, what="data once the backend is back")
        finally:
            await poller.__aexit__()



async def _failed(srv: ServerProcess) -> bool:
    from test_proxies import metric  # noqa: PLC0415

    return await metric(srv, "centrifugo_proxy_call_outcomes_total", type=HOOK, outcome="unavailable") >= 2


@pytest.fixture(params=["redis_cluster"])
def cluster_engine(request: pytest.FixtureRequest) -> dict[str, Any]:
    return engine(request)


async def test_two_nodes_each_poll_the_keys_of_their_own_connections(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend,
        cluster_engine: dict[str, Any]) -> None:
    store = Store(versioned=True)
    wire(backend, store)
    backend.answers["refresh_b"] = store.answer
    for key in ("s1", "s2", "s3"):
        store.set(key, {"score": 0})
    a = await server_factory({**config(backend.endpoint(HOOK), mode="versioned"), **cluster_engine}, name="node-a")
    b = await server_factory({**config(backend.endpoint("refresh_b"), mode="versioned"), **cluster_engine},
                             name="node-b")
    ch = unique_channel("votes:")
    on_a = [await subscriber(a, js_factory, backend, ch, user=f"a{i}") for i in range(3)]
    on_b = [await subscriber(b, js_factory, backend, ch, user=f"b{i}") for i in range(2)]
    for js, keys in zip(on_a, (["s1"], ["s1", "s2"], ["s2"]), strict=True):
        await js.call("sp_track", channel=ch, keys=keys)
    for js, keys in zip(on_b, (["s2"], ["s3"]), strict=True):
        await js.call("sp_track", channel=ch, keys=keys)
    await wait_until(lambda: all(updates(js, "s2") for js in (on_a[1], on_a[2], on_b[0])), what="first data")
    # Each node: one call per cycle with the union of its own connections' keys.
    await wait_until(lambda: keys_of(polls(backend)[-1]) == ["s1", "s2"], what="node A's call")
    await wait_until(lambda: keys_of(polls(backend, "refresh_b")[-1]) == ["s2", "s3"], what="node B's call")
    store.set("s2", {"score": 7})
    for js in (on_a[1], on_a[2], on_b[0]):
        await wait_until(lambda js=js: updates(js, "s2")[-1:] == [{"score": 7}], what="s2 on both nodes")
    # Versions come from the backend: the same on both nodes.
    versions = {e["version"] for js in (on_a[1], on_b[0]) for e in js.events("sp_update") if e["key"] == "s2"}
    assert versions == {1, 2}


async def test_shared_poll_benchmark_runs_and_polls_once_per_interval() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.sharedpoll_bench", "--subscribers", "3,12", "--keys", "10", "--per-client",
        "4", "--interval", "200", "--duration", "1", cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 90))[0].decode()
    assert proc.returncode == 0, out  # exit 1 when a subscriber missed a cycle's update
    assert out.count("deliveries_per_server_cpu_s") == 2 and "refresh calls per interval by subscribers" in out


async def test_a_reconnecting_client_gets_only_what_changed_meanwhile(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend) -> None:
    store = Store()
    wire(backend, store)
    store.set("r1", {"n": 1})
    store.set("r2", {"n": 1})
    srv = await server_factory(config(backend.endpoint(HOOK)))
    ch = unique_channel("votes:")
    keeper = await subscriber(srv, js_factory, backend, ch, user="keeper")  # keeps the node polling both keys
    await keeper.call("sp_track", channel=ch, keys=["r1", "r2"])
    js = await subscriber(srv, js_factory, backend, ch)
    await js.call("sp_track", channel=ch, keys=["r1", "r2"])
    await wait_until(lambda: updates(js, "r1") and updates(js, "r2"), what="first data")
    signs = len(backend.of("sign"))
    await js.call("disconnect")
    store.set("r2", {"n": 2})
    await wait_until(lambda: updates(keeper, "r2")[-1:] == [{"n": 2}], what="r2 changed while js was away")
    await js.call("connect", token=srv.token("alice"), wait=True)
    # The SDK replays its tracks with the versions it holds (and its cached signature): only r2 comes again.
    await wait_until(lambda: updates(js, "r2")[-1:] == [{"n": 2}], what="r2 after the reconnect")
    await cycles(backend, 3)
    assert updates(js, "r1") == [{"n": 1}]
    assert len(backend.of("sign")) == signs


async def test_a_new_backend_epoch_makes_versioned_subscribers_start_over(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend) -> None:
    store = Store(versioned=True)
    wire(backend, store)
    store.epoch = "e1"
    store.set("v", {"run": 1})
    store.set("v", {"run": 1, "edit": 2})
    srv = await server_factory(config(backend.endpoint(HOOK), mode="versioned"))
    ch = unique_channel("votes:")
    js = await subscriber(srv, js_factory, backend, ch)
    await js.call("sp_track", channel=ch, keys=["v"])
    await wait_until(lambda: updates(js, "v") == [{"run": 1, "edit": 2}], what="data under epoch e1")
    # The publisher restarts: versions start over under a new epoch. Centrifugo's answer: the channel's
    # subscribers are unsubscribed with 2500, resubscribe, and track from version 0.
    store.epoch = "e2"
    store.items["v"] = ({"run": 2}, 1)
    await wait_until(lambda: updates(js, "v")[-1:] == [{"run": 2}], what="data under epoch e2")
    assert any(e.get("code") == 2500 for e in js.events("subscribing"))
    assert [e["version"] for e in js.events("sp_update") if e["key"] == "v"][-1] == 1


async def test_keys_whose_signature_expired_are_dropped_after_the_extra_delay(
        server_factory: ServerFactory, backend: HttpBackend) -> None:
    store = Store()
    wire(backend, store)
    store.set("e", 1)
    store.set("keep", 2)
    cfg = config(backend.endpoint(HOOK))
    cfg["channel"]["namespaces"][0]["shared_poll"]["track_expired_extra_delay"] = "1s"
    srv = await server_factory(cfg)
    ch = unique_channel("votes:")
    async with raw(srv) as c:
        await c.connect(srv.token("dave"))
        await c.send({"id": 2, "subscribe": {"channel": ch, "type": 4}})
        await c.reply(2)
        short = make_signature(HMAC_KEY, "dave", ch, ["e"], 1)
        forever = make_signature(HMAC_KEY, "dave", ch, ["keep"], -int(time.time()))  # exp 0: never expires
        assert forever.split(":")[1] == "0"
        await c.send({"id": 3, "sub_refresh": {"channel": ch, "type": 1, "track": [
            {"signature": short, "items": [{"key": "e"}]}, {"signature": forever, "items": [{"key": "keep"}]}]}})
        result = (await c.reply(3))["sub_refresh"]
        assert result["expires"] is True and result["ttl"] <= 1
        await wait_until(lambda: any(keys_of(c) == ["e", "keep"] for c in polls(backend)), what="both polled")
        # No new signature for "e": a second after it expired the node stops polling it for this connection.
        await wait_until(lambda: keys_of(polls(backend)[-1]) == ["keep"], timeout=15, what="e dropped")


async def test_shared_poll_publish_reaches_trackers_on_every_node(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend,
        cluster_engine: dict[str, Any]) -> None:
    store = Store(versioned=True)
    wire(backend, store)
    store.set("hot", {"price": 1})
    cfg = {**config(backend.endpoint(HOOK), mode="versioned", interval="5s"), **cluster_engine}
    cfg["channel"]["namespaces"][0]["shared_poll"]["publish_enabled"] = True
    cfg["channel"]["namespaces"].append({"name": "quiet", "subscription_type": "shared_poll",
                                         "shared_poll": {"mode": "versioned"}})
    a = await server_factory(cfg, name="node-a")
    b = await server_factory(cfg, name="node-b")
    ch = unique_channel("votes:")
    on_a = await subscriber(a, js_factory, backend, ch, user="a")
    on_b = await subscriber(b, js_factory, backend, ch, user="b")
    for js in (on_a, on_b):
        await js.call("sp_track", channel=ch, keys=["hot"])
    for js in (on_a, on_b):
        await wait_until(lambda js=js: updates(js, "hot") == [{"price": 1}], what="polled data")
    # Published on node A, delivered on both nodes with its version; the backend still says price 1.
    await a.api_result("shared_poll_publish", {"channel": ch, "key": "hot", "data": {"price": 5}, "version": 7})
    for js in (on_a, on_b):
        await wait_until(lambda js=js: updates(js, "hot")[-1:] == [{"price": 5}], what="published data")
    # A stale version is dropped silently; the next newer one arrives right after the newest before it.
    await b.api_result("shared_poll_publish", {"channel": ch, "key": "hot", "data": {"price": 0}, "version": 3})
    await b.api_result("shared_poll_publish", {"channel": ch, "key": "hot", "data": {"price": 9}, "version": 8})
    for js in (on_a, on_b):
        await wait_until(lambda js=js: updates(js, "hot")[-1:] == [{"price": 9}], what="newer publish")
        assert [e["version"] for e in js.events("sp_update") if e["key"] == "hot"] == [1, 7, 8]
    # Centrifugo's codes: no version or key 107, a stream namespace 107, publish_enabled off 108.
    for payload, code in (({"channel": ch, "key": "hot", "data": {}}, 107),
                          ({"channel": ch, "data": {}, "version": 1}, 107),
                          ({"channel": unique_channel("chat:"), "key": "k", "data": {}, "version": 1}, 107),
                          ({"channel": unique_channel("quiet:"), "key": "k", "data": {}, "version": 1}, 108)):
        assert (await a.api("shared_poll_publish", payload))["error"]["code"] == code, payload


async def test_shared_poll_publish_over_grpc(server_factory: ServerFactory, js_factory: JsFactory,
                                             backend: HttpBackend) -> None:
    store = Store(versioned=True)
    wire(backend, store)
    store.set("g", {"n": 1})
    cfg = config(backend.endpoint(HOOK), mode="versioned", interval="5s")
    cfg["channel"]["namespaces"][0]["shared_poll"]["publish_enabled"] = True
    port = free_port()
    cfg["grpc_api"] = {"enabled": True, "address": "127.0.0.1", "port": port, "key": "grpc-key"}
    srv = await server_factory(cfg)
    ch = unique_channel("votes:")
    js = await subscriber(srv, js_factory, backend, ch)
    await js.call("sp_track", channel=ch, keys=["g"])
    await wait_until(lambda: updates(js, "g") == [{"n": 1}], what="polled data")
    auth = (("authorization", "apikey grpc-key"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        api = CentrifugoApiStub(channel)
        reply = await api.SharedPollPublish(api_pb2.SharedPollPublishRequest(
            channel=ch, key="g", data=b'{"n":2}', version=2), metadata=auth)
        assert not reply.HasField("error")
        reply = await api.SharedPollPublish(api_pb2.SharedPollPublishRequest(channel=ch, key="g", data=b"{}"),
                                            metadata=auth)
        assert reply.error.code == 107
    await wait_until(lambda: updates(js, "g")[-1:] == [{"n": 2}], what="published over GRPC")


class _RawPush:
    """A bare WebSocket connection in either protocol that hands back each server message's exact bytes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, protocol: str) -> None:
        self.ws, self.protocol = ws, protocol
        self.pending: list[bytes] = []

    async def send(self, cmd: dict[str, Any]) -> None:
        if self.protocol == "json":
            await self.ws.send_str(json.dumps(cmd))
        else:
            body = json_format.ParseDict(cmd, client_pb2.Command()).SerializeToString()
            await self.ws.send_bytes(varint(len(body)) + body)

    async def message(self) -> bytes:
        while not self.pending:
            msg = await self.ws.receive(timeout=10)
            if self.protocol == "json":
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                self.pending.extend(line.encode() for line in msg.data.split("\n"))
            else:
                assert msg.type is aiohttp.WSMsgType.BINARY, msg
                self.pending.extend(split_delimited(msg.data))
        return self.pending.pop(0)

    async def push(self) -> bytes:
        """The next push, skipping replies and pings."""
        while True:
            raw_msg = await self.message()
            if self.protocol == "json" and raw_msg.startswith(b'{"push":'):
                return raw_msg
            if self.protocol == "protobuf" and client_pb2.Reply.FromString(raw_msg).HasField("push"):
                return raw_msg


def _pb_removal(channel: str, key: str) -> bytes:
    """Centrifuge's Reply{Push{channel, Publication{key, removed}}}, spelled out field by field (the fields in
    number order, as its vtproto marshaller writes them) rather than by the encoder under test."""

    def field(number: int, body: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(body)) + body

    pub = field(11, key.encode()) + varint(12 << 3) + b"\x01"
    return field(4, field(2, channel.encode()) + field(4, pub))


async def test_a_removal_and_a_publish_are_centrifuges_publications_byte_for_byte(
        server_factory: ServerFactory, backend: HttpBackend, protocol: str) -> None:
    """What centrifuge writes (keyed_hub.go broadcastRemoval: Publication{Key, Removed: true}; shared_poll.go
    handlePublishedData: Publication{Key, Data, Version, Epoch}), in protocol v0.21.1's JSON field order."""
    store = Store(versioned=True)
    store.epoch = "e1"
    wire(backend, store)
    store.set("y", {"v": 1})
    cfg = config(backend.endpoint(HOOK), mode="versioned")
    cfg["channel"]["namespaces"][0]["shared_poll"]["publish_enabled"] = True
    srv = await server_factory(cfg)
    ch = unique_channel("votes:")
    query = "" if protocol == "json" else "?cf_protocol=protobuf"
    async with aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url + query) as ws:
        c = _RawPush(ws, protocol)
        sig = make_signature(HMAC_KEY, "erin", ch, ["y"], 60)
        await c.send({"id": 1, "connect": {"token": srv.token("erin")}})
        for i in (2, 4):  # the backend's epoch replaces the channel's first one: 2500, subscribe again
            await c.send({"id": i, "subscribe": {"channel": ch, "type": 4}})
            await c.send({"id": i + 1, "subRefresh" if protocol == "protobuf" else "sub_refresh": {
                "channel": ch, "type": 1, "track": [{"signature": sig, "items": [{"key": "y"}]}]}})
            first = await c.push()
            if i == 2:
                unsub = (json.loads(first)["push"]["unsubscribe"] if protocol == "json"
                         else json_format.MessageToDict(client_pb2.Reply.FromString(first).push.unsubscribe))
                assert unsub["code"] == 2500, first
        await wait_until(lambda: any(keys_of(p) == ["y"] for p in polls(backend)), what="y polled")
        await srv.api_result("shared_poll_publish", {"channel": ch, "key": "y", "data": {"v": 5}, "version": 5,
                                                     "epoch": "e1"})
        published = await c.push()
        store.removed.add("y")
        removed = await c.push()
    if protocol == "json":
        head = b'{"push":{"channel":%s,"pub":{"data":' % json.dumps(ch).encode()
        assert first.startswith(head) and first.endswith(b',"key":"y","version":1}}}'), first
        assert json.loads(first)["push"]["pub"]["data"] == {"v": 1}
        assert published.startswith(head) and published.endswith(b',"key":"y","epoch":"e1","version":5}}}')
        assert json.loads(published)["push"]["pub"]["data"] == {"v": 5}
        assert removed == b'{"push":{"channel":%s,"pub":{"key":"y","removed":true}}}' % json.dumps(ch).encode()
    else:
        reply = client_pb2.Reply.FromString(published)
        assert json.loads(reply.push.pub.data) == {"v": 5}
        expected = client_pb2.Reply(push=client_pb2.Push(channel=ch, pub=client_pb2.Publication(
            data=reply.push.pub.data, key="y", epoch="e1", version=5)))
        assert published == expected.SerializeToString()
        assert client_pb2.Reply.FromString(first).push.pub.version == 1
        assert removed == _pb_removal(ch, "y")


@pytest.mark.parametrize(("transport", "protocol"), [("http_stream", "json"), ("sse", "json"),
                                                     ("http_stream", "protobuf")])
async def test_shared_poll_over_http_stream_and_sse_emulation(
        server_factory: ServerFactory, backend: HttpBackend, transport: str, protocol: str) -> None:
    """centrifuge-js's bidirectional emulation: pushes down the stream, subscribe/track/untrack as POSTs to
    /emulation. Versioned mode with shared_poll_publish, so every kind of push crosses the stream."""
    store = Store(versioned=True)
    wire(backend, store)
    store.set("m", {"v": 1})
    store.set("n", {"v": 1})
    cfg = {**config(backend.endpoint(HOOK), mode="versioned"), "http_stream": {"enabled": True},
           "sse": {"enabled": True}}
    cfg["channel"]["namespaces"][0]["shared_poll"]["publish_enabled"] = True
    srv = await server_factory(cfg)
    ch = unique_channel("votes:")
    async with emulated_client(srv, transport, protocol) as js:
        await js.call("connect", token=srv.token("frank"), wait=True)
        assert (await js.wait("connected"))["transport"] == transport
        await js.call("sp_subscribe", channel=ch, signUrl=backend.endpoint("sign"), signUser="frank", wait=True)
        await js.call("sp_track", channel=ch, keys=["m", "n"])
        await wait_until(lambda: updates(js, "m") == [{"v": 1}] and updates(js, "n") == [{"v": 1}],
                         what="first data")
        store.set("m", {"v": 2})  # a refresh answer with a newer version
        await wait_until(lambda: updates(js, "m")[-1:] == [{"v": 2}], what="m changed")
        await srv.api_result("shared_poll_publish", {"channel": ch, "key": "n", "data": {"v": 9}, "version": 9})
        await wait_until(lambda: updates(js, "n")[-1:] == [{"v": 9}], what="n published")
        store.removed.add("m")
        removal = await js.wait("sp_update", key="m", removed=True)
        assert removal_seen(removal) == sdk_removal(ch, "m", protocol)
        assert await js.call("sp_tracked", channel=ch) == ["n"]
        store.set("o", {"v": 1})
        await js.call("sp_untrack", channel=ch, keys=["n"])
        await js.call("sp_track", channel=ch, keys=["o"])
        await wait_until(lambda: updates(js, "o") == [{"v": 1}], what="o tracked")
        await wait_until(lambda: keys_of(polls(backend)[-1]) == ["o"], timeout=15, what="n no longer polled")
        got = [(e["key"], e.get("version"), bool(e.get("removed"))) for e in js.events("sp_update")]
        assert got.count(("m", 2, False)) == 1 and got.count(("n", 9, False)) == 1


@pytest.mark.parametrize("kind", ["uni_sse", "uni_http_stream", "uni_websocket", "uni_grpc"])
async def test_a_unidirectional_connection_gets_no_shared_poll_data(
        server_factory: ServerFactory, js_factory: JsFactory, backend: HttpBackend, kind: str) -> None:
    """Centrifugo has no shared poll for unidirectional transports: they send no commands after connect, so no
    subscribe of type 4 and no track. A channel of a shared poll namespace in the connect token is subscribed
    like any server-side channel (Centrifugo 6.8 internal/client/handler.go OnClientConnecting: SubscribeOptions
    without a Type; centrifuge client.go connect), a stream subscription: tracked keys' data goes to trackers only
    (centrifuge shared_poll.go: per-key broker channels), the publish API refuses the channel (api.go Publish:
    107), and only the broadcast API, which checks no subscription type (api.go Broadcast), reaches it."""
    store = Store(versioned=True)
    wire(backend, store)
    store.set("u", {"v": 1})
    cfg = {**config(backend.endpoint(HOOK), mode="versioned"), "uni_sse": {"enabled": True},
           "uni_http_stream": {"enabled": True}, "uni_websocket": {"enabled": True},
           "uni_grpc": {"enabled": True, "address": "127.0.0.1", "port": free_port()}}
    cfg["client"] = {"ping_interval": "1s", "pong_timeout": "500ms"}
    cfg["channel"]["namespaces"][0]["shared_poll"]["publish_enabled"] = True
    srv = await server_factory(cfg)
    ch = unique_channel("votes:")
    async with uni_stream(srv, kind, {"token": srv.token("gina", channels=[ch])}) as messages:
        connect = (await anext(messages))["connect"]
        assert connect["subs"] == {ch: {}}
        js = await subscriber(srv, js_factory, backend, ch)
        await js.call("sp_track", channel=ch, keys=["u"])
        await wait_until(lambda: updates(js, "u") == [{"v": 1}], what="the tracker's data")
        await srv.api_result("shared_poll_publish", {"channel": ch, "key": "u", "data": {"v": 2}, "version": 2})
        await wait_until(lambda: updates(js, "u")[-1:] == [{"v": 2}], what="the tracker's published data")
        assert (await srv.api("publish", {"channel": ch, "data": {"v": 3}}))["error"]["code"] == 107
        assert (await srv.api_result("broadcast", {"channels": [ch], "data": {"v": 4}})) == {
            "responses": [{"result": {}}]}
        # Pings, then the broadcast: no shared poll push came before it.
        while not (message := await anext(messages)):
            pass
        assert message == {"channel": ch, "pub": {"data": {"v": 4}}}
        # Two pings (a second apart) and nothing else after it.
        assert [await anext(messages), await anext(messages)] == [{}, {}]
        assert updates(js, "u") == [{"v": 1}, {"v": 2}], "the broadcast is not the tracker's data"
