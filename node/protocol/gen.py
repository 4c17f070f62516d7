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


if __name__ == "__main__":
    sys.exit(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
