"""Instructions per delivery on the fan-out path (broker -> hub -> client queue -> transport write), counted by
valgrind's callgrind, so the figure does not depend on how loaded the machine is.

    python -m loadtest.fanout_instructions [--tree DIR ...] [--subscribers 1000] [--publishers 1 8]
                                           [--kind stream map]

In one process, with the memory engine and no sockets: N clients (the real ``Client`` with the real WebSocket
transport over a fake asyncio transport that only counts bytes) subscribe to one channel; after one warm-up
publication, M publications go through ``Node.publish`` in rounds of P (P publishers whose requests arrive in
the same loop iteration, so each client gets the P in one write), each round once the previous one has been
written to every client. The event loop's clock stands still, so the writer's time-based choices do not follow
valgrind's slowdown or the machine's load. Only the rounds are counted: the process runs uninstrumented up to
them and turns callgrind on and off around them (``CALLGRIND_START_INSTRUMENTATION`` and
``CALLGRIND_DUMP_STATS`` from a small C library compiled on first use; needs valgrind's headers and a C
compiler).

``--kind map`` counts a map update's delivery the same way: the channel is a map (persistent mode, 100 keys
written beforehand), its subscribers are made live by the node's subscribe steps as a map subscribe's LIVE
phase makes them (positioned, from the stream's top), and the publications are ``MapService.publish`` calls
(``map_publish``) cycling over the keys. ``--tree`` runs the same workload against another checkout (an older
commit's worktree, say) to compare; the stream workload only uses what both the current and the pre-restructure
node expose, the map workload needs a node with map channels.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# From the checkout under measurement: the workload runs with PYTHONPATH set to it.
from node.client import Client
from node.config import Config
from node.config_load import load
from node.models import HistoryOptions, PublishOptions, RequestInfo, SubscribeOptions
from node.server import build_node
from node.transports.websocket import WebSocketTransport

ROOT = Path(__file__).resolve().parents[1]
CHANNEL = "bench"
MAP_CHANNEL = "maps:bench"
MAP_KEYS = 100
# Map updates written before the subscribers come: the state's keys, and offsets with four digits from the
# warm-up on, so every delivery of the run has the same size (keys have two digits).
MAP_PREFILL = 999
MAP_NAMESPACE = {"name": "maps", "subscription_type": "map",
                 "map": {"mode": "persistent", "stream_size": 1000, "stream_ttl": "5m"}}
PAYLOAD = b'{"text":"' + b"x" * 80 + b'"}'
MARK = "fanout"
TOGGLES = f"""
#include <valgrind/callgrind.h>
void measure_start(void) {{ CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }}
void measure_stop(void) {{ CALLGRIND_DUMP_STATS_AT("{MARK}"); CALLGRIND_STOP_INSTRUMENTATION; }}
"""


def toggles() -> Any:
    """The callgrind client requests as a C library (compiled once, cached by content)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("a C compiler is needed for the callgrind client requests")
    library = Path(tempfile.gettempdir()) / f"fugato-callgrind-{hashlib.sha256(TOGGLES.encode()).hexdigest()[:16]}.so"
    if not library.exists():
        source = library.with_suffix(".c")
        source.write_text(TOGGLES)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return ctypes.CDLL(str(library))


class _Raw:
    """The asyncio transport under the WebSocket transport: takes every write at once, counts the bytes."""

    total = 0  # over all clients
    target = 0
    reached = asyncio.Event()  # total >= target

    def write(self, data: bytes) -> None:
        _Raw.total += len(data)
        if _Raw.total >= _Raw.target:
            _Raw.reached.set()

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


class _Ws:
    closed = False


def new_client(node: Any, i: int) -> Client:
    client = Client(node, WebSocketTransport(_Ws(), _Raw()), RequestInfo(transport="websocket"))  # type: ignore[arg-type]
    client.user = f"u{i}"
    return client


def map_config() -> Config:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps({"channel": {"namespaces": [MAP_NAMESPACE]}}))
        return load(str(path), {}, {}).config


async def workload(kind: str, subscribers: int, publishers: int, publications: int) -> None:
    measure = toggles()
    node: Any = build_node(map_config() if kind == "map" else Config())
    engine = getattr(node, "_engine", None) or node.engine  # private since the restructure
    await engine.broker.start(node)  # the node as the broker's handler, without the node's periodic tasks
    clients = []
    if kind == "map":
        channel = MAP_CHANNEL
        # What a map subscribe's LIVE phase asks of the node (MapService._go_live): positioned from the top.
        live = SubscribeOptions(enable_positioning=True, enable_recovery=True,
                                history_meta_ttl=node.maps.options(channel).effective_meta_ttl)
        keys = [f"k{i:02}" for i in range(MAP_KEYS)]
        for i in range(MAP_PREFILL):
            await node.maps.publish(channel, keys[i % MAP_KEYS], PAYLOAD)
        top = (await node.history(channel, HistoryOptions(limit=0))).position
        for i in range(subscribers):
            client = new_client(node, i)
            start = await node.subscribe_client(client, channel, live, server_side=False, since=top)
            node.start_delivery(client, channel, start)
            clients.append(client)
        sent = 0

        async def publish() -> None:
            nonlocal sent
            await node.maps.publish(channel, keys[sent % MAP_KEYS], PAYLOAD)
            sent += 1
    else:
        channel = CHANNEL
        # The subscriber registry: node.subscriptions since the restructure, the hub before it.
        add = node.subscriptions.add if hasattr(node, "subscriptions") else node.hub.add_sub
        for i in range(subscribers):
            client = new_client(node, i)
            add(channel, client)
            node.hub.release(channel, client, None)
            clients.append(client)  # the hub may hold its subscribers weakly
        opts = PublishOptions()

        async def publish() -> None:
            await node.publish(channel, PAYLOAD, opts)

    # Warm-up: one publication, which also tells the bytes each delivery writes.
    await publish()
    for _ in range(100):
        await asyncio.sleep(0)
    size, rest = divmod(_Raw.total, subscribers)
    if not size or rest:
        raise SystemExit(f"warm-up publication not delivered to every client ({_Raw.total} bytes)")
    rounds, rest = divmod(publications, publishers)
    if rest:
        raise SystemExit("--publications must be a multiple of each --publishers")
    measure.measure_start()
    for _ in range(rounds):
        # P publishers' requests are read in one loop iteration: their P publications share each client's
        # write. The next round comes once every client has been handed this one's.
        for _ in range(publishers):
            await publish()
        _Raw.target = _Raw.total + size * subscribers * publishers
        _Raw.reached.clear()
        await _Raw.reached.wait()
    measure.measure_stop()
    if _Raw.total != size * subscribers * (publications + 1):
        raise SystemExit(f"deliveries were not all of {size} bytes ({_Raw.total} bytes in all)")
    print(f"node from {sys.modules['node'].__file__}: {kind}, {subscribers} subscribers, {publications} "
          f"publications of {size} bytes", file=sys.stderr)


def counted(script: str, args: list[str], tree: Path, *, also: Path | None = None, keep_as: str = "") -> int:
    """Instructions of the measured part (between ``measure_start`` and ``measure_stop``) of ``script`` run
    with ``args`` under callgrind, importing the node from ``tree`` (then from ``also``, for what only the
    measuring checkout has); the workload's ``node from`` line is echoed on stderr. With ``$KEEP_CALLGRIND`` set
    and a ``keep_as`` name, the measured part's dump is kept there under that name."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(tree) if also is None else f"{tree}{os.pathsep}{also}"
        env = {**os.environ, "PYTHONPATH": path, "PYTHONHASHSEED": "0"}
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/out",
               sys.executable, script, *args]
        done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"workload failed in {tree}:\n{done.stderr[-3000:]}")
        for line in [line for line in done.stderr.splitlines() if line.startswith("node from")][-1:]:
            print(line, file=sys.stderr)
        for dump in sorted(Path(tmp).glob("out*")):
            text = dump.read_text()
            if f"Client Request: {MARK}" in text:
                summary = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
                if summary is not None:
                    if keep_as and os.environ.get("KEEP_CALLGRIND"):
                        dump.replace(Path(os.environ["KEEP_CALLGRIND"]) / keep_as)
                    return int(summary.group(1))
        raise SystemExit(f"no dump of the measured part in {tmp}:\n{done.stderr[-3000:]}")


def callgrind(tree: Path, kind: str, subscribers: int, publishers: int, publications: int) -> int:
    """Instructions of the measured part of one workload run under callgrind."""
    return counted(__file__, ["--inner", "--kind", kind, "--subscribers", str(subscribers), "--publishers",
                              str(publishers), "--publications", str(publications)], tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", help="checkout(s) to measure (default: this one)")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publishers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--publications", type=int, default=64, help="a multiple of each --publishers")
    parser.add_argument("--kind", nargs="+", choices=("stream", "map"), default=["stream"],
                        help="stream publications, map updates (map_publish), or both")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        loop = asyncio.new_event_loop()
        # A clock that stands still: the writer's time-based choices (how long a flush waits for more, how long
        # a slice writes) would otherwise follow valgrind's slowdown and the machine's load, not the code.
        loop.time = lambda: 0.0  # type: ignore[method-assign]
        loop.run_until_complete(workload(args.kind[0], args.subscribers, args.publishers[0], args.publications))
        loop.close()
        return 0
    for tree in args.tree or [ROOT]:
        for kind, publishers in ((k, p) for k in args.kind for p in args.publishers):
            count = callgrind(tree.resolve(), kind, args.subscribers, publishers, args.publications)
            print(f"{tree}: {kind}, {publishers} publisher(s), {args.subscribers} subscribers, {args.publications} "
                  f"publications: {count / (args.publications * args.subscribers):.0f} instructions per delivery "
                  f"({count} in all)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
