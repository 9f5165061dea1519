"""The package's shape: no import cycle among its modules, no module importing the root
package, and a top-level namespace of the documented names only. The layers themselves
are checked by `lint-imports` (the contract in pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import moefast

PACKAGE = Path(moefast.__file__).parent


def _graph() -> dict[str, set[str]]:
    # Every import counts: those inside functions and those for type checking only.
    graph = grimp.build_graph("moefast", include_external_packages=False)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        targets = graph.find_modules_directly_imported_by(module)
        # The compiled core has no source: its imports appear as imports of the root.
        edges[module] = {t for t in targets if t != "moefast"}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_modules():
    edges = _graph()
    assert len(edges) > 40  # the whole package was read
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_the_root_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom) and node.module == "moefast" and node.level == 0
            ) or (isinstance(node, ast.Import) and any(a.name == "moefast" for a in node.names)):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_namespace_is_the_documented_api():
    assert dir(moefast) == sorted(moefast.__all__)
    for name in moefast.__all__:
        assert getattr(moefast, name) is not None
