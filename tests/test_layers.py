"""The package is layered: no module imports itself back through others, and the top-level subpackages
(algorithms, comm, config, ..., and top-level modules such as cli) import one another without a cycle.

Every `import` and `from ... import` of `hosfl_sim.*` counts, at module level and inside functions alike:
an import deferred into a function still ties the two modules together. An import resolves to the module
file it loads: importing a package counts as importing its `__init__`, and `from pkg import name` where
`pkg.name` is a submodule counts as importing that submodule. So an `__init__` re-exporting from its
submodules is an edge package -> submodule, and a submodule importing from its own package's `__init__`
closes a cycle: it should import from the defining submodule instead. Imports under `if TYPE_CHECKING:` do
not count: they load nothing (annotations only)."""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

import hosfl_sim

PACKAGE = "hosfl_sim"
ROOT = Path(hosfl_sim.__file__).resolve().parent


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its `__init__`)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_package(modules: dict[str, Path], name: str) -> bool:
    return modules[name].name == "__init__.py"


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): its body is never run, so it loads nothing."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST):
    """Every import statement under `node`, in functions and classes too, but not in `if TYPE_CHECKING:`."""
    children = node.orelse if _is_type_checking(node) else ast.iter_child_nodes(node)
    for child in children:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        else:
            yield from _import_nodes(child)


def _imports(modules: dict[str, Path], name: str) -> set[str]:
    """The package's modules that module `name` loads by its own imports (wherever they stand in the file)."""
    tree = ast.parse(modules[name].read_text(), filename=str(modules[name]))
    package = name if _is_package(modules, name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == PACKAGE or a.name.startswith(PACKAGE + ".")]
        else:
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        for target in targets:
            assert target in modules, f"{modules[name]}:{node.lineno}: {target} is not a module of {PACKAGE}"
            if target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {name: _imports(modules, name) for name in modules}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a closed chain [a, b, ..., a], or None; deterministic (sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _layer(name: str) -> str:
    """The top-level unit a module belongs to: `algorithms` for hosfl_sim.algorithms.base, `cli` for hosfl_sim.cli."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def _where(graph: dict[str, set[str]], a: str, b: str) -> str:
    """The module imports that make layer `a` import layer `b` (the first few)."""
    edges = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts if _layer(m) == a and _layer(t) == b)
    more = f" (and {len(edges) - 3} more)" if len(edges) > 3 else ""
    return f"  {a} -> {b}: " + ", ".join(edges[:3]) + more


def test_the_resolver_sees_imports_of_every_kind(tmp_path):
    graph = _graph()
    assert "hosfl_sim.cli" in graph and "hosfl_sim.algorithms" in graph
    # a package's __init__ re-exporting from its submodules is an edge package -> submodule
    assert "hosfl_sim.memory.meter" in graph["hosfl_sim.memory"]
    # imports deferred into functions count (the CLI defers most of its imports)
    assert graph["hosfl_sim.cli"] >= {"hosfl_sim.runtime.engine", "hosfl_sim.memory_modes"}
    # the rules on a made-up package: relative imports, `from pkg import submodule`, TYPE_CHECKING, functions
    pkg = tmp_path / PACKAGE / "sub"
    pkg.mkdir(parents=True)
    files = {f"{PACKAGE}.sub": pkg / "__init__.py", **{f"{PACKAGE}.sub.{m}": pkg / f"{m}.py" for m in "abcde"}}
    files[f"{PACKAGE}.sub"].write_text("from .a import A\n")
    files[f"{PACKAGE}.sub.a"].write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        f"from {PACKAGE}.sub import c, A\n"
        "if TYPE_CHECKING:\n    from .d import D\n"
        f"def f():\n    import {PACKAGE}.sub.e\n"
    )
    for m in "bcde":
        files[f"{PACKAGE}.sub.{m}"].write_text("")
    assert _imports(files, f"{PACKAGE}.sub") == {f"{PACKAGE}.sub.a"}
    assert _imports(files, f"{PACKAGE}.sub.a") == {f"{PACKAGE}.sub", *(f"{PACKAGE}.sub.{m}" for m in "bce")}
    tree = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(tree) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back():
    graph = _graph()
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


def test_the_subpackages_are_layered():
    graph = _graph()
    layers: dict[str, set[str]] = {}
    for module, targets in graph.items():
        layers.setdefault(_layer(module), set()).update(_layer(t) for t in targets if _layer(t) != _layer(module))
    cycle = _find_cycle(layers)
    assert cycle is None, (
        "import cycle between subpackages: "
        + " -> ".join(cycle)
        + "\n"
        + "\n".join(_where(graph, a, b) for a, b in pairwise(cycle))
    )
