"""castle's layers import only downward: the rule of docs/architecture.md, read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "castle"

# Lowest first. A module may import its own layer and the layers before it, never one after.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("castle.errors", "castle.words", "castle.io")),
    ("spec", ("castle.spec",)),
    ("plan", ("castle.plan",)),
    ("tls", ("castle.tls",)),
    ("targets", ("castle.targets",)),
    ("readers", ("castle.readers",)),
    ("views", ("castle.views",)),
    ("lab", ("castle.lab",)),
    ("cli", ("castle.cli", "castle.entry", "castle.__main__")),
]


def layer_of(module: str) -> int:
    """The index of the layer that holds a dotted module name (the longest prefix wins)."""
    if module == "castle":
        return 0  # the package itself: its version only
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return rank


def module_name(path: Path, root: Path) -> str:
    """The dotted name of a module file under the package root."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every castle module a file imports, at top level or inside a function, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "castle"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "castle":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                sub = root.parent / (candidate.replace(".", "/"))
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.append((node.lineno, candidate if is_module else base))
    return found


def upward_imports(root: Path) -> list[str]:
    """Each import that reaches a higher layer, as 'file:line: a (layer) imports b (layer)'."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        here = module_name(path, root)
        mine = layer_of(here)
        for line, target in imports(path, root):
            theirs = layer_of(target)
            if theirs > mine:
                where = f"{path.relative_to(root.parent)}:{line}"
                problems.append(f"{where}: {here} ({LAYERS[mine][0]}) "
                                f"imports {target} ({LAYERS[theirs][0]})")
    return problems


def test_no_layer_imports_a_higher_one() -> None:
    assert upward_imports(PACKAGE) == []


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        graph[module_name(path, PACKAGE)] = {t for _, t in imports(path, PACKAGE)}
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node or nxt == "castle":
                continue
            if seen.get(nxt) == 1:
                loop = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(loop))
            if nxt not in seen:
                visit(nxt, stack + [nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])


def test_every_module_stays_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 520}
    assert big == {}


def test_negative_control_an_upward_import_is_caught(tmp_path: Path) -> None:
    """A copy of the package with one deliberate upward import (spec -> views) fails the rule."""
    import shutil

    copy = tmp_path / "castle"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    model = copy / "spec" / "model.py"
    model.write_text(model.read_text() + "\nfrom castle.views import matrix  # upward\n")
    problems = upward_imports(copy)
    assert len(problems) == 1
    assert "castle.spec.model (spec) imports castle.views.matrix (views)" in problems[0]


@pytest.mark.parametrize("module", ["castle.spec.model", "castle.views.matrix", "castle.cli"])
def test_layer_table_covers_the_package(module: str) -> None:
    assert layer_of(module) >= 0
