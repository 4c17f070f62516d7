"""Regenerates ``proxy_pb2.py``, ``proxy_pb2.pyi`` and ``proxy_pb2_grpc.py`` from ``proxy.proto`` (same pinned
grpcio-tools as the API's code)::

    .venv/bin/python -m node.proxy.proto.generate

``tests/unit/test_proxy_config.py`` regenerates into a temporary directory and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

from node.protocol.gen import ROOT, compile_proto

PROTO_DIR: Final = Path(__file__).resolve().parent
PROTO: Final = PROTO_DIR / "proxy.proto"
OUTPUTS: Final = ("proxy_pb2.py", "proxy_pb2.pyi", "proxy_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    return compile_proto(PROTO, OUTPUTS, out_root)


if __name__ == "__main__":
    for path in generate(ROOT):
        print(path.relative_to(ROOT), file=sys.stderr)
