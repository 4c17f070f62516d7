"""Regenerate the client protocol's ``client_pb2.py`` and the uni stream's ``unistream_pb2*.py`` (with their
``.pyi``) from the ``.proto`` files here; needs grpcio-tools (``test`` extra).

    python -m node.protocol.gen [OUT_DIR]

OUT_DIR defaults to the repository root, which rewrites the committed files in place; the tests generate
into a temporary directory and compare, so the committed code cannot drift from the .proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the proto is registered as node/protocol/client.proto: no clash with an SDK's own


def generate(out: Path = ROOT) -> int:
    from grpc_tools import protoc  # noqa: PLC0415 - a development tool, not a runtime dependency

    out.mkdir(parents=True, exist_ok=True)
    protos = [str(HERE / "client.proto"), str(HERE / "unistream.proto")]
    code = protoc.main(["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", *protos])
    # Only the uni stream has a service: GRPC stubs for it alone (client.proto would get an empty module).
    return int(code or protoc.main(["protoc", f"-I{ROOT}", f"--grpc_python_out={out}", protos[1]]))


def compile_proto(proto: Path, outputs: tuple[str, ...], out_root: Path) -> list[Path]:
    """Compile ``proto`` (a file inside this repository) under ``out_root``; returns the ``outputs`` paths.

    The proto is compiled relative to the repository root so the generated imports read
    ``from node.api.proto import api_pb2`` (the server API's and the proxies' GRPC code use this)."""
    from grpc_tools import protoc  # noqa: PLC0415  # the test extra only: the server needs just grpcio and protobuf

    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto shipped with grpcio-tools
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", str(proto.relative_to(ROOT))]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    target = out_root / proto.parent.relative_to(ROOT)
    return [target / name for name in outputs]


if __name__ == "__main__":
    sys.exit(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
