"""Imports flow one way: every import in mobileclip2/ (also those inside functions) goes to a module of
the same or a lower layer of docs/design.md's layer table, and no modules import each other in a
circle. The table in the doc is the source: a module it does not place fails the test too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mobileclip2"
DESIGN = REPO / "docs" / "design.md"


def layer_table() -> list[tuple[int, list[str]]]:
    """(layer number, module patterns) from the design doc's table: rows '| N name | `a`, `b.*` |'."""
    text = DESIGN.read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        match = re.match(r"\|\s*(\d+)[^|]*\|(.*)\|\s*$", line)
        if match:
            rows.append((int(match.group(1)), re.findall(r"`([^`]+)`", match.group(2))))
    assert rows, "docs/design.md has no layer table under '## Layers'"
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str, table: list[tuple[int, list[str]]]) -> int | None:
    """The layer whose pattern matches ``module`` most specifically (``a.*``: the package a and every
    module in it; a name without ``*``: that module alone)."""
    relative = module[len("mobileclip2.") :] if module != "mobileclip2" else ""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for layer, patterns in table:
        for pattern in patterns:
            if pattern.endswith(".*"):
                stem = pattern[:-2]
                hit = relative == stem or relative.startswith(stem + ".")
                specificity = len(stem)
            else:
                hit = relative == ("" if pattern == "mobileclip2" else pattern)
                specificity = 10_000
            if hit and (best is None or specificity > best[0]):
                best = (specificity, layer)
    return None if best is None else best[1]


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``module`` imports anywhere in its file (``from x import y``: x.y if a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {module: imports_of(module, path, known) for module, path in found.items()}


def test_every_module_has_a_layer():
    table = layer_table()
    unplaced = [module for module in modules() if layer_of(module, table) is None]
    assert not unplaced, f"modules missing from the layer table in docs/design.md: {unplaced}"


def test_no_module_imports_one_above_it():
    table = layer_table()
    upward = [
        f"{module} (layer {layer_of(module, table)}) imports {target} (layer {layer_of(target, table)})"
        for module, targets in graph().items()
        for target in sorted(targets)
        if (layer_of(target, table) or 0) > (layer_of(module, table) or 0)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path a -> ... -> a, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_can_fail():
    """The walker sees function-level and relative imports, and the cycle finder finds a cycle."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    edges = graph()
    assert "mobileclip2.errors" in edges["mobileclip2.compat.factory"]  # from ..errors import (...)
    table = [(0, ["errors"]), (1, ["compat.*"]), (2, ["compat.factory"])]
    assert layer_of("mobileclip2.compat.factory", table) == 2
    assert layer_of("mobileclip2.compat.coca", table) == 1
