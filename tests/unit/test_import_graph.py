"""The import graph of launcher, strategies and cluster, read from the source with ``ast``:
no cycles between modules, and no private name imported from another package.

A cycle made import order matter and hid behind imports moved into functions; import-linter
(``lint-imports``, scripts/test.sh) checks the layers but only finds cycles between sibling
modules, so the whole graph is checked here, function-level imports included. A private name
(``_x``) is its module's own business: another package that needs it needs a public name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("launcher", "strategies", "cluster")


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    imported: str  # the module it names (``from m import name`` -> m, or m.name for a submodule)
    names: tuple[str, ...]  # the names taken from it (``from m import a, b``)
    line: int


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, Path]) -> Iterator[Import]:
    """Every import of an ftl module, at module level or inside a function (``TYPE_CHECKING``
    blocks aside: they never run)."""
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(name, alias.name, (), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(node, name, path.name == "__init__.py")
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    yield Import(name, sub if sub in mods else module, (alias.name,), node.lineno)


def _known(module: str, mods: dict[str, Path]) -> str | None:
    while module and module not in mods:
        module = module.rpartition(".")[0]
    return module or None


def package_of(module: str) -> str:
    """What "another package" means: a top-level package, or one subpackage (or module) of
    launcher: launcher.plan, launcher.run, launcher.cli..."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "launcher" and len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_module_imports_itself_back_through_others():
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for imp in imports(mods):
        target = _known(imp.imported, mods)
        if target is not None and target != imp.importer:
            graph[imp.importer].add(target)
    assert len(graph) > 100  # the walk found the code
    assert "launcher.plan.auto_sharding" in graph["launcher.plan.planner"]  # and its imports
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_private_names_imported_from_another_package():
    mods = modules()
    offenders = []
    for imp in imports(mods):
        target = _known(imp.imported, mods)
        if target is None or package_of(target) == package_of(imp.importer):
            continue
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private:
            offenders.append(f"{mods[imp.importer].relative_to(ROOT)}:{imp.line} imports "
                             f"{', '.join(private)} from {target}")
    assert offenders == []
