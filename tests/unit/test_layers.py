"""The layers of node/ (docs/ARCHITECTURE.md): every module sits on a floor, imports only from its own floor or
below, and no modules import each other in a circle. Read from the source with ``ast``. An import under
``if TYPE_CHECKING:`` counts like any other: a lower layer that must name a higher one describes what it uses
as a ``Protocol`` on its own floor (node/maps/host.py, node/connections.py), which the higher one fits.

A new module must be given a floor here: a new room is a decision, not an accident."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "node"

# Floor of each module, by the longest matching name (a package's name covers everything in it).
FLOORS: dict[str, int] = {
    # 0: values, configuration, wire formats and helpers that know nothing of the node
    "node": 0,
    "node.errors": 0,
    "node.models": 0,
    "node.config": 0,
    "node.config_load": 0,
    "node.config_fields": 0,
    "node.config_engine": 0,
    "node.protocol": 0,
    "node.delta": 0,
    "node.timers": 0,
    "node.liveness": 0,  # a worker's heartbeat (the supervisor side is node.workers)
    "node.procstats": 0,
    "node.transport": 0,  # the Transport protocol (what the session needs from a transport)
    "node.auth": 0,
    "node.consumers.config": 0,  # a feature's configuration dataclasses sit with the Config that holds them
    "node.proxy.config": 0,
    "node.maps": 0,  # map subscriptions: their options, state values and page encoding
    "node.sharedpoll": 0,  # shared poll subscriptions: options, track signatures, wire messages
    "node.tagsfilter": 0,  # subscriptions' tags filters (FilterNode)
    # 1: the engine: brokers (memory, Redis, NATS ...), presence, history
    "node.broker": 1,
    "node.recovery": 1,
    "node.metrics": 1,  # Prometheus collectors; names the engine's PUB/SUB error kinds
    "node.maps.store": 1,  # where map state lives (memory; Redis is node.broker.redis_map)
    # 2: the node's parts: subscriptions, writer, hub (fan-out), control channel
    "node.subscriptions": 2,
    "node.writer": 2,
    "node.hub": 2,
    "node.control": 2,
    "node.user_actions": 2,  # subscribe/unsubscribe/disconnect/refresh of a user's connections on every node
    # 3: the application layer and the front door: policy, proxies, Node (the only one holding the engine)
    "node.policy": 3,
    "node.proxy": 3,
    # map publish/remove and the map subscribe phases, owned by Node, which fits the protocols of node.maps.host
    "node.maps.service": 2,
    "node.maps.host": 2,
    # shared poll channels and their refresh workers, owned by Node, which fits node.sharedpoll.host's protocols
    "node.sharedpoll.service": 2,
    "node.sharedpoll.host": 2,
    "node.service_host": 2,  # what those services read from the node (config, policy, metrics)
    "node.connections": 2,  # the connections API's survey: a connection as the Described protocol
    "node.maps.presence": 2,  # map_clients / map_users: subscribers as keys of presence maps
    "node.node": 3,
    # 4: the client session: one connection and its commands
    "node.commands": 4,
    "node.client": 4,
    # 5: the edges: transports, the server API, the admin UI, async consumers
    "node.transports": 5,
    "node.api": 5,
    "node.admin": 5,
    "node.consumers": 5,
    # 6: the composition root
    "node.server": 6,
    # 7: command line and process management
    "node.workers": 7,  # process management on the supervisor side
    "node.clitools": 7,  # the CLI's config and token commands
    "node.healthcheck": 7,  # the container's HEALTHCHECK command
    "node.cli": 7,
    "node.__main__": 7,
}

GENERATED = ("_pb2.py", "_pb2_grpc.py")
ENGINE_REACH = re.compile(r"\.engine\.(broker|presence)\b|\._engine\b")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> int | None:
    if module == "node":
        return FLOORS["node"]
    name = module
    while name != "node":
        if name in FLOORS:
            return FLOORS[name]
        name = name.rsplit(".", 1)[0]
    return None


def imports(path: Path, modules: set[str]) -> set[str]:
    """The node modules ``path`` imports, at any depth (in a function, under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(), str(path))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from node.protocol import codec`` imports node.protocol.codec, if that is a module.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for imported in names:
            target = imported
            while target and target not in modules:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != own:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for p in PACKAGE.rglob("*.py") if not p.name.endswith(GENERATED)]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_floor() -> None:
    missing = sorted(m for m in import_graph() if floor_of(m) is None)
    assert not missing, f"give these modules a floor in tests/unit/test_layers.py (see docs/ARCHITECTURE.md): {missing}"


def test_no_import_circle() -> None:
    assert cycles(import_graph()) == []


def test_no_module_imports_from_a_higher_floor() -> None:
    graph = import_graph()
    upward = sorted(
        f"{m} (floor {floor_of(m)}) imports {target} (floor {floor_of(target)})"
        for m, targets in graph.items() for target in targets
        if (floor_of(m) or 0) < (floor_of(target) or 0))
    assert upward == []


def test_only_the_node_holds_the_engine() -> None:
    """Everything above the engine reaches it through Node (node.py), whose engine is private."""
    offenders = sorted(
        m for m, targets in import_graph().items()
        if (floor_of(m) or 0) > FLOORS["node.node"] and any(t.startswith("node.broker.") and t not in (
            "node.broker.base", "node.broker.factory") for t in targets))
    assert offenders == []
    for path in PACKAGE.rglob("*.py"):
        if path != PACKAGE / "node.py" and not path.name.endswith(GENERATED):
            assert not ENGINE_REACH.search(path.read_text()), f"{path} reaches past Node into the engine"


@pytest.mark.parametrize(("source", "expected"), [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_circle_finder_finds_circles(source: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(source) == expected
