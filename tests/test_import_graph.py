"""No import circle among lcer_core's modules: what Python runs at import (module-level imports,
not those deferred into functions or kept for type checkers) forms no cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lcer_core"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _import_time_nodes(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The imports run at import time: top level, in ``try`` and ``if`` blocks, not under
    ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            found += _import_time_nodes(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            found += _import_time_nodes(node.body + node.orelse + node.finalbody)
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph() -> dict[str, set[str]]:
    """Each lcer_core module and the lcer_core modules it imports at import time."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        nodes = _import_time_nodes(ast.parse(path.read_text()).body)
        is_package = path.name == "__init__.py"
        graph[name] = {
            target
            for node in nodes
            for target in _targets(name, is_package, node)
            if target in mods and target != name
        }
    return graph


def test_lcer_core_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "lcer_core.datasets.custom" in graph
    assert "lcer_core.datasets.prepare" in graph["lcer_core.datasets.custom"]
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None
