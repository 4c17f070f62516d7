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

from node.protocol.gen import compile_proto

PROTO_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = PROTO_DIR.parents[2]  # the repository (the directory holding the ``node`` package)
PROTO: Final = PROTO_DIR / "api.proto"
OUTPUTS: Final = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under ``out_root``/node/api/proto/ and return their paths."""
    return compile_proto(PROTO, OUTPUTS, out_root)


def main() -> None:
    for path in generate(ROOT):
        print(path.relative_to(ROOT), file=sys.stderr)


if __name__ == "__main__":
    main()
