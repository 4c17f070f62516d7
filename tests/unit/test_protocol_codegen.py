"""The committed protobuf code of the client protocol and the uni stream is what their .proto files generate."""

from __future__ import annotations

from pathlib import Path

from node.protocol import gen


def test_committed_client_pb2_matches_the_proto(tmp_path: Path) -> None:
    assert gen.generate(tmp_path) == 0
    for name in ("client_pb2.py", "client_pb2.pyi", "unistream_pb2.py", "unistream_pb2.pyi", "unistream_pb2_grpc.py"):
        fresh = (tmp_path / "node" / "protocol" / name).read_text()
        committed = (gen.HERE / name).read_text()
        assert fresh == committed, f"{name} is stale: run python -m node.protocol.gen"
