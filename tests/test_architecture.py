"""The package layout is the architecture (docs/ARCHITECTURE.md), checked from the source tree:
no import cycle between modules, no module imports another module's underscore names, each
package imports only the layers below it, and only the CLI imports typer."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "shardkit"

# package -> the shardkit packages it may import (besides itself). Top-level modules of
# `shardkit` (its __init__ and __main__) are the public face and are not checked here.
ALLOWED = {
    "core": set(),
    "records": {"core"},
    "store": {"core"},
    "pipeline": {"records", "store", "core"},
    "queue": {"pipeline", "records", "store", "core"},
    "cli": {"queue", "pipeline", "records", "store", "core"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = p
    return mods


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (never executed, so no cycle)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(mods: dict[str, Path]):
    """(importer, imported module, names) for every import of a shardkit module, lazy ones too."""
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                if not target.startswith("shardkit"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:
                        yield name, sub, []
                    else:
                        yield name, target, [alias.name]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("shardkit"):
                        yield name, alias.name, []


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_no_import_cycles():
    mods = _modules()
    edges = defaultdict(set)
    for a, b, _ in _imports(mods):
        if b in mods and a != b:
            edges[a].add(b)
    cycles = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{a} imports {b}.{n}"
        for a, b, names in _imports(_modules())
        for n in names
        if n.startswith("_") and not n.startswith("__") and a != b
    ]
    assert not private, private


def test_packages_import_only_the_layers_below():
    bad = []
    for a, b, _ in _imports(_modules()):
        pa, pb = _package(a), _package(b)
        if pa is None or pb is None or pa == pb:
            continue
        if pb not in ALLOWED[pa]:
            bad.append(f"{a} -> {b}")
    assert not bad, bad


def test_only_the_cli_imports_typer_and_rich():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("shardkit.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in ("typer", "rich", "click")]
    assert not offenders, offenders


def test_the_checker_sees_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    """The checks above can fail: a planted cycle and private import are found."""
    pkg = tmp_path / "shardkit" / "core"
    pkg.mkdir(parents=True)
    (tmp_path / "shardkit" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from shardkit.core.b import _hidden\n")
    (pkg / "b.py").write_text("def f():\n    from shardkit.core import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "shardkit")
    mods = _modules()
    found = list(_imports(mods))
    assert ("shardkit.core.a", "shardkit.core.b", ["_hidden"]) in found
    assert ("shardkit.core.b", "shardkit.core.a", []) in found
