"""The import graph of app/: no circle, and nothing imports the factory's package.

Every import counts, those inside functions too (a lazy import hides a circle, it does not
remove it). With no circle the modules fall into layers (a module's layer is one more than
the highest layer it imports), so no module imports one above it; `python
tests/test_imports.py` prints them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _targets(name: str, path: Path, node: ast.AST, known: dict[str, Path]) -> set[str]:
    """The modules of app/ that one import statement of module `name` reaches."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(max(node.level - 1, 0)):
            package = package.rpartition(".")[0]
        base = node.module or "" if not node.level else ".".join(p for p in (package, node.module) if p)
        # `from pkg import mod` reaches pkg.mod; `from pkg import name` reaches pkg
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    reached = set()
    for target in wanted:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            reached.add(target)
    return reached


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name] |= _targets(name, path, node, known)
    return edges


def layers(edges: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer; raises ValueError naming a circle when there is one."""
    layer: dict[str, int] = {}
    visiting: list[str] = []

    def visit(name: str) -> int:
        if name in layer:
            return layer[name]
        if name in visiting:
            raise ValueError(" -> ".join(visiting[visiting.index(name):] + [name]))
        visiting.append(name)
        layer[name] = 1 + max((visit(t) for t in edges[name]), default=-1)
        visiting.pop()
        return layer[name]

    for name in sorted(edges):
        visit(name)
    return layer


def test_no_module_of_app_imports_in_a_circle():
    try:
        layers(graph())
    except ValueError as exc:
        raise AssertionError(f"an import circle in app/: {exc}") from None


def test_no_module_imports_the_factory_package():
    """app/__init__.py holds create_app, the top of the graph: below it, nothing imports it."""
    importers = sorted(name for name, targets in graph().items() if "app" in targets)
    assert importers == [], f"these modules import app/__init__.py: {importers}"


if __name__ == "__main__":
    found = layers(graph())
    for level in range(max(found.values()) + 1):
        print(level, " ".join(sorted(n for n, v in found.items() if v == level)))
    sys.exit(0)
