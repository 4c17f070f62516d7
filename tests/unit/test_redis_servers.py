"""The real-Redis test infrastructure (``tests/redis_servers.py``, its fixtures) does what other tests rely on."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis
import redis.cluster
from redis_servers import (
    HOST,
    RedisCluster,
    RedisClusterFactory,
    RedisNotInstalledError,
    RedisStandalone,
    RedisStartError,
    ensure_redis_installed,
)


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) != 0


def test_standalone_serves_its_port_and_is_gone_after_stop(tmp_path: Path) -> None:
    server = RedisStandalone(tmp_path).start()
    try:
        assert server.port != 6379
        assert server.address == f"127.0.0.1:{server.port}"
        assert server.url == f"redis://127.0.0.1:{server.port}"
        with redis.Redis.from_url(server.url, decode_responses=True) as r:
            assert r.ping() is True
            assert r.set("fgt:key", "value") is True
            assert r.get("fgt:key") == "value"
            assert r.config_get("save") == {"save": ""}
            assert r.config_get("appendonly") == {"appendonly": "no"}
        assert (tmp_path / "redis.log").exists()
    finally:
        server.stop()
    assert not server.running
    assert _refused(server.port)
    server.stop()  # idempotent


def test_standalone_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        server = RedisStandalone(tmp_path, busy.getsockname()[1])
        with pytest.raises(RedisStartError, match="Address already in use"):
            server.start()
    assert not server.running


def test_missing_binaries_name_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisNotInstalledError, match="apt-get install -y redis-server"):
        ensure_redis_installed()


def test_session_standalone_and_shards_are_distinct_servers(
    redis_standalone: RedisStandalone, redis_shards: tuple[RedisStandalone, RedisStandalone], redis_prefix: str
) -> None:
    servers = [redis_standalone, *redis_shards]
    assert len({s.port for s in servers}) == 3
    for i, server in enumerate(servers):
        with server.client() as r:
            r.set(f"{redis_prefix}:who", i)
    for i, server in enumerate(servers):
        with server.client() as r:
            assert r.get(f"{redis_prefix}:who") == str(i)
            r.delete(f"{redis_prefix}:who")


def test_prefix_is_unique_per_test(redis_prefix: str) -> None:
    assert redis_prefix.startswith("fgt")
    assert len(redis_prefix) == 11


def test_shared_cluster_has_three_masters_with_one_replica_each(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.seeds) == 6
    assert redis_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in redis_cluster.ports)
    slots = redis_cluster.slot_map()
    assert sum(last - first + 1 for first, last in slots) == 16384
    masters = {master for master, _replicas in slots.values()}
    replicas = {replica for _master, replicas in slots.values() for replica in replicas}
    assert len(masters) == 3
    assert len(replicas) == 3
    assert masters | replicas == set(redis_cluster.ports)
    assert all(len(r) == 1 for _master, r in slots.values())
    for port in redis_cluster.ports:
        assert redis_cluster.role(port) == ("master" if port in masters else "slave")
        with redis_cluster.client(port) as r:
            assert "cluster_state:ok" in r.execute_command("CLUSTER", "INFO")
            assert redis_cluster.slot_map(port) == slots


def test_master_for_key_agrees_with_redis_py_cluster(redis_cluster: RedisCluster, redis_prefix: str) -> None:
    keys = [f"{redis_prefix}:{i}" for i in range(12)]
    seen: set[int] = set()
    with redis.cluster.RedisCluster(host=HOST, port=redis_cluster.ports[0], decode_responses=True) as rc:
        for key in keys:
            port = redis_cluster.master_for_key(key)
            seen.add(port)
            assert rc.get_node_from_key(key).port == port
            # a plain client on that port would get MOVED (an error) if it were the wrong node
            with redis_cluster.client(port) as r:
                assert r.set(key, port) is True
            assert rc.get(key) == str(port)
            assert rc.delete(key) == 1
    assert len(seen) > 1  # 12 random keys all on one of 3 masters: (1/3)^11


def test_failover_promotes_a_replica_and_the_old_master_rejoins_as_replica(
    redis_cluster_factory: RedisClusterFactory,
) -> None:
    cluster = redis_cluster_factory()
    key = "fgt:failover"
    old_master = cluster.master_for_key(key)
    with cluster.client(old_master) as r:
        r.set(key, "kept")
        assert r.execute_command("WAIT", 1, 5000) == 1  # the replica has it before the master dies

    started = time.monotonic()
    assert cluster.kill_master_for_key(key) == old_master
    assert not cluster.is_running(old_master)
    cluster.wait_healthy(timeout=10)
    failover_s = time.monotonic() - started
    new_master = cluster.master_for_key(key)
    assert new_master != old_master
    assert cluster.role(new_master) == "master"
    with cluster.client(new_master) as r:
        assert r.get(key) == "kept"
    assert failover_s < 10

    cluster.restart_node(old_master)
    cluster.wait_replica_of(old_master, new_master, timeout=10)
    cluster.wait_healthy(timeout=10)
    assert cluster.role(old_master) == "slave"
    assert cluster.master_for_key(key) == new_master
