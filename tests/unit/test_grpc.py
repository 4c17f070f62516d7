"""The GRPC API without a node: the committed generated code matches api.proto, protobuf <-> executor JSON
conversion, and port sharing between workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from harness import free_port

from node.api.executor import Executor
from node.api.grpc_server import fill, request_params, start_grpc_server
from node.api.proto import api_pb2 as pb
from node.api.proto import generate
from node.config import GrpcApiConfig
from node.errors import NodeError


def test_committed_code_matches_the_schema(tmp_path: Path) -> None:
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTO_DIR / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), \
            f"{committed.name} is stale: run python -m node.api.proto.generate"


def test_request_params_keep_payload_bytes_and_presence() -> None:
    params = request_params(pb.SubscribeRequest(
        channel="c", user="u", info=b'{"a": [1, 2]}', data=b"\xffbinary",
        override=pb.SubscribeOptionOverride(presence=pb.BoolValue(value=False))))
    assert params["info"] == b'{"a": [1, 2]}'  # payloads are passed on byte for byte, JSON or not
    assert params["data"] == b"\xffbinary"
    assert params["override"] == {"presence": {"value": False}}  # a set BoolValue(false) still overrides
    assert "recover_since" not in params  # unset message: absent
    assert params["expire_at"] == 0 and params["client"] == ""


def test_request_params_of_a_batch() -> None:
    params = request_params(pb.BatchRequest(parallel=True, commands=[
        pb.Command(publish=pb.PublishRequest(channel="c", data=b"1", tags={"k": "v"})),
        pb.Command(history=pb.HistoryRequest(channel="c", limit=-1))]))
    assert params["parallel"] is True
    assert params["commands"][0] == {"publish": {
        "channel": "c", "data": b"1", "b64data": "", "skip_history": False, "tags": {"k": "v"}, "idempotency_key": "",
        "delta": False, "version": 0, "version_epoch": ""}}
    assert params["commands"][1]["history"]["limit"] == -1


def test_fill_sets_raw_json_bytes_maps_and_empty_results() -> None:
    history = pb.HistoryResponse()
    fill(history.result, {"publications": [{"data": {"x": "é"}, "offset": 3, "tags": {"k": "v"},
                                            "info": {"user": "u", "client": "c", "conn_info": [1]}}],
                          "epoch": "e", "offset": 3, "unknown_key": 1})
    pub = history.result.publications[0]
    assert json.loads(pub.data) == {"x": "é"} and pub.offset == 3 and dict(pub.tags) == {"k": "v"}
    assert pub.info.user == "u" and json.loads(pub.info.conn_info) == [1]

    presence = pb.PresenceResponse()
    fill(presence.result, {"presence": {"c1": {"user": "u", "client": "c1"}}})
    assert presence.result.presence["c1"].user == "u"

    subscribe = pb.SubscribeResponse()
    fill(subscribe.result, {})
    subscribe.result.SetInParent()
    assert subscribe.HasField("result") and not subscribe.HasField("error")


async def test_workers_share_the_port_only_with_reuse_port() -> None:
    port = free_port()
    config = GrpcApiConfig(enabled=True, address="127.0.0.1", port=port)
    executor = cast(Executor, None)  # never called: no RPC is made
    servers: list[Any] = []
    try:
        servers.append(await start_grpc_server(executor, config, reuse_port=True))
        servers.append(await start_grpc_server(executor, config, reuse_port=True))  # a second worker
        with pytest.raises(NodeError, match="cannot listen"):
            servers.append(await start_grpc_server(executor, config, reuse_port=False))
    finally:
        for server in servers:
            await server.stop(None)
