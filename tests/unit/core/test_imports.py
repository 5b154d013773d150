"""The node core stays sans-IO and its imports run one way (node -> ... -> effects)."""

from __future__ import annotations

import ast
from pathlib import Path

import zring.core.node

CORE = Path(zring.core.node.__file__).parent

# each part's layer: a module imports only modules of later layers (never its own, never
# node.py), so the parts form a stack a newcomer can read from the bottom up
LAYERS = [
    {"node"},
    {"admission", "admin", "status"},
    {"handoff"},
    {"plan", "antientropy"},
    {"multikey", "replica"},
    {"coordinator", "drops"},
    {"hints", "gossip", "clocks"},
    {"topology"},
    {"context"},
    {"calls", "quorum", "batching"},
    {"effects", "streaming", "repair"},
]
LAYER = {name: index for index, names in enumerate(LAYERS) for name in names}
IO_MODULES = {"zmq", "time", "threading", "socket", "asyncio", "selectors", "subprocess"}


def imports_of(path: Path) -> list[str]:
    """Every module ``path`` imports, as dotted names (``from zring.core import repair``
    gives ``zring.core.repair``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def core_modules() -> list[Path]:
    return sorted(p for p in CORE.glob("*.py") if p.name != "__init__.py")


def test_every_core_module_has_a_layer():
    assert {p.stem for p in core_modules()} == set(LAYER)


def violations(path: Path) -> list[str]:
    """What ``path`` imports against the rules: I/O, node.py, or a part of its own or an
    earlier layer."""
    found = []
    for name in imports_of(path):
        parts = name.split(".")
        if parts[0] in IO_MODULES:
            found.append(f"{path.name} imports {parts[0]}: the core is sans-IO")
        if parts[:2] != ["zring", "core"] or len(parts) < 3 or parts[2] not in LAYER:
            continue
        target = parts[2]
        if target == "node" or LAYER[target] <= LAYER[path.stem]:
            found.append(f"{path.name} (layer {LAYER[path.stem]}) imports {target} "
                         f"(layer {LAYER[target]}): against the order")
    return list(dict.fromkeys(found))


def test_the_core_does_no_io_and_imports_run_one_way():
    assert [v for path in core_modules() for v in violations(path)] == []


def test_the_check_catches_io_and_an_import_against_the_order(tmp_path):
    rogue = tmp_path / "topology.py"
    rogue.write_text("import time\nfrom zring.core.coordinator import Coordinator\n"
                     "from zring.core import node\n")
    found = violations(rogue)
    assert len(found) == 3 and "sans-IO" in found[0] and "coordinator" in found[1]
