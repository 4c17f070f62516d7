"""Regenerates ``api_pb2.py``, ``api_pb2.pyi`` and ``api_pb2_grpc.py`` from ``api.proto``.

Run from anywhere, with the test extra installed (it pins grpcio-tools, so the output is reproducible)::

    .venv/bin/python -m node.api.proto.generate

``tests/unit/test_grpc.py`` regenerates into a temporary directory and compares, so the committed
modules cannot drift from the schema.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

PROTO_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = PROTO_DIR.parents[2]  # the repository (the directory holding the ``node`` package)
PROTO: Final = PROTO_DIR / "api.proto"
OUTPUTS: Final = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under ``out_root``/node/api/proto/ and return their paths."""
    return compile_proto(PROTO, OUTPUTS, out_root)


def compile_proto(proto: Path, outputs: tuple[str, ...], out_root: Path) -> list[Path]:
    """Compile ``proto`` (a file inside this repository) under ``out_root``; returns the ``outputs`` paths.

    The proto is compiled relative to the repository root so the generated imports read
    ``from node.api.proto import api_pb2``."""
    from grpc_tools import protoc  # noqa: PLC0415  # the test extra only: the server needs just grpcio and protobuf

    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto shipped with grpcio-tools
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", str(proto.relative_to(ROOT))]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    target = out_root / proto.parent.relative_to(ROOT)
    return [target / name for name in outputs]


def main() -> None:
    for path in generate(ROOT):
        print(path.relative_to(ROOT), file=sys.stderr)


if __name__ == "__main__":
    main()
