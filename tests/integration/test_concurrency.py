"""``client.concurrency`` (Centrifugo v6): commands of one connection run side by side, at most that many at a
time, and each reply is sent when its command finishes; by default they run one after the other, in order."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import ServerFactory, wait_until
from proxy_backends import HttpBackend
from test_protocol_raw import raw


def config(backend: HttpBackend, concurrency: int | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"rpc": {"proxy": {"endpoint": backend.endpoint("rpc"), "timeout": "10s"},
                                   "without_namespace": {"proxy_enabled": True}, "ping": {"enabled": True}}}
    if concurrency is not None:
        cfg["client"] = {"concurrency": concurrency}
    return cfg


@pytest.mark.parametrize(("concurrency", "order"), [(None, [2, 3, 4]), (1, [2, 3, 4]), (4, [3, 4, 2])])
async def test_replies_follow_completion_with_concurrency(server_factory: ServerFactory, concurrency: int | None,
                                                          order: list[int]) -> None:
    async with HttpBackend() as backend:
        backend.faults["rpc"] = "slow"  # the backend holds RPCs until released
        srv = await server_factory(config(backend, concurrency))
        async with raw(srv) as c:
            await c.connect(srv.token("alice"))
            await c.ws.send_str("\n".join(json.dumps(cmd) for cmd in (
                {"id": 2, "rpc": {"method": "slow"}},
                {"id": 3, "rpc": {"method": "ping"}},
                {"id": 4, "presence_stats": {"channel": "anything"}},
            )))
            await wait_until(lambda: len(backend.calls) == 1, timeout=10)
            got: list[dict[str, Any]] = []
            if concurrency == 4:  # the slow RPC does not hold back the others
                got = [await c.recv() for _ in range(2)]
                assert [r["id"] for r in got] == [3, 4]
            backend.released.set()
            while len(got) < 3:
                msg = await c.recv()
                if "id" in msg:
                    got.append(msg)
    assert [r["id"] for r in got] == order
    assert "rpc" in got[order.index(2)] and "rpc" in got[order.index(3)]
