"""The layers of docs/architecture.md, enforced: every import of every module (inside functions too) is read with
``ast``; no cycle between modules, no arrow the layer rules forbid, typer/rich/click only in the CLI.

Run ``python tests/test_architecture.py ROOT`` to check another checkout (it printed the cycle and the unknown
layers of the flat layout before the layered-house change).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("eptctl", "registry", "migrations")
CLI_ONLY = ("typer", "rich", "click")
# The one library module that may use Rich: the console reporter draws live bars with it on a terminal, importing it
# inside a function (the library still imports no Rich at start-up: tests/test_package.py).
RICH_REPORTER = "eptctl.core.progress"

# layer -> the layers it may import (itself included). Nothing imports upward, nothing imports the CLI.
ALLOWED = {
    "core": {"core"},
    "methods": {"methods", "core"},
    "data": {"data", "core"},
    "backbones": {"backbones", "core", "data", "methods"},
    "engine": {"engine", "core", "data", "methods", "backbones"},
    "registry": {"registry", "core", "migrations"},
    "migrations": {"migrations", "registry", "core"},
    "workflows": {"workflows", "core", "data", "methods", "backbones", "engine", "registry"},
    "interop": {"interop", "core", "data", "methods", "backbones", "engine", "registry"},
    "reporting": {"reporting", "core", "registry", "workflows"},
    "serving": {"serving", "core", "data", "methods", "backbones", "engine", "registry", "workflows"},
    "cli": {"cli", "core", "data", "methods", "backbones", "engine", "registry", "workflows", "interop", "reporting",
            "serving"},
}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages under ``root``."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, anywhere in its body, resolved to the most specific module of ours that
    exists (``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``); third-party names as given."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return found


def layer(module: str) -> str | None:
    """The layer a module of ours belongs to (``eptctl`` itself is core: it holds only the version and errors)."""
    parts = module.split(".")
    if parts[0] in ("registry", "migrations"):
        return parts[0]
    if module == "eptctl":
        return "core"
    if module == "eptctl.__main__":
        return "cli"
    return parts[1] if parts[1] in ALLOWED else None


def graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    mods = modules(root)
    known = set(mods)
    edges = {}
    for name, path in mods.items():
        targets = set()
        for imported in imports_of(name, path, known):
            while imported and imported not in known and imported.split(".")[0] in PACKAGES:
                imported = imported.rpartition(".")[0]  # a name inside a module: the module
            if imported in known and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(root: Path) -> list[str]:
    """Every broken rule under ``root``, one line each."""
    edges = graph(root)
    problems = [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    for module, targets in sorted(edges.items()):
        source = layer(module)
        if source is None:
            problems.append(f"{module} belongs to no layer of docs/architecture.md")
            continue
        for target in sorted(targets):
            if layer(target) is not None and layer(target) not in ALLOWED[source]:
                problems.append(f"{module} ({source}) imports {target} ({layer(target)})")
    mods = modules(root)
    for module, path in sorted(mods.items()):
        if layer(module) == "cli":
            continue
        for imported in sorted(imports_of(module, path, set(mods))):
            if module == RICH_REPORTER and imported.split(".")[0] == "rich":
                continue
            if imported.split(".")[0] in CLI_ONLY:
                problems.append(f"{module} imports {imported}: only eptctl.cli may")
    return problems


def test_the_layers_hold():
    assert violations(ROOT) == []


def test_the_checker_sees_imports_inside_functions_and_cycles(tmp_path):
    """The checker itself: a cycle hidden in a function and an upward arrow are both reported."""
    pkg = tmp_path / "eptctl"
    for sub in ("core", "engine", "workflows"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "a.py").write_text("def f():\n    from eptctl.workflows import b\n")
    (pkg / "workflows" / "b.py").write_text("from eptctl.engine.a import f\n")
    (pkg / "core" / "c.py").write_text("import typer\n")
    found = violations(tmp_path)
    assert "import cycle: eptctl.engine.a -> eptctl.workflows.b" in found
    assert "eptctl.engine.a (engine) imports eptctl.workflows.b (workflows)" in found
    assert "eptctl.core.c imports typer: only eptctl.cli may" in found


if __name__ == "__main__":
    for line in violations(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(line)
