"""The stage packages embed, correct and evaluate do not import each other in a loop (module- or
function-level imports alike); the shared helpers live below them in morphobench.data."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "morphobench"
STAGES = ("embed", "correct", "evaluate")


def package_imports(pkg: str) -> set[str]:
    """morphobench sub-packages imported anywhere in ``pkg`` (any import statement)."""
    found = set()
    for path in (SRC / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                parts = n.split(".")
                if parts[0] == "morphobench" and len(parts) > 1:
                    found.add(parts[1])
    return found - {pkg}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, ()))
    return seen


def test_no_import_loop_between_embed_correct_evaluate():
    graph = {pkg: package_imports(pkg) & set(STAGES) for pkg in STAGES}
    assert all(pkg not in reachable(graph, pkg) for pkg in STAGES), graph
    assert "correct" not in package_imports("embed") and "evaluate" not in package_imports("embed")
    assert "embed" not in package_imports("correct")
