"""The import graph of rtinfer has layers and no circles (docs/ARCHITECTURE.md, "Layers").

A unit is a first-level subpackage (``rtinfer.ir`` with ``ir.ops``, ``rtinfer.passes``, ...) or
a top-level module (``rtinfer.compile``, ``rtinfer.cli``, ...). Module-level and function-local
imports both count: a lazy import that dodges a cycle at import time is still a dependency.
A unit imports units of its own layer or below, never above; units of one layer never form a
circle; nothing inside the package imports the package face ``rtinfer`` (``rtinfer/__init__``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the source folders of the distribution (pyproject's package-dir)
SOURCES = {"compiler": "rtinfer", "passes": "rtinfer.passes", "kernels": "rtinfer.kernels"}
FACE = "rtinfer"

# unit -> layer, bottom first; a unit may import its own layer and those below
LAYERS: dict[str, int] = {
    # leaves: import nothing of rtinfer
    "rtinfer.errors": 0, "rtinfer.paths": 0, "rtinfer.version": 0,
    "rtinfer.ir": 1, "rtinfer.workers": 1,
    "rtinfer.rewrite": 2,
    "rtinfer.pass_manager": 3,
    "rtinfer.passes": 4, "rtinfer.frontends": 4, "rtinfer.kernels": 4,
    "rtinfer.backends": 5,
    "rtinfer.testing": 5, "rtinfer.bisector": 5, "rtinfer.models": 5, "rtinfer.measure": 5,
    "rtinfer.artifact": 6, "rtinfer.cache": 6, "rtinfer.int8": 6, "rtinfer.bf16": 6,
    "rtinfer.compile": 7, "rtinfer.prune": 7, "rtinfer.quantize": 7,
    "rtinfer.simplify": 7,
    "rtinfer.dynamo": 8,
    "rtinfer.optimize_cmd": 9, "rtinfer.demo": 9, "rtinfer.serving": 9,
    "rtinfer.cli": 10,
}
MAX_LINES = 800  # "files the size of a thought" (shared/STYLE.md)


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in SOURCES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The rtinfer modules ``name`` imports, anywhere in its body."""

    def resolve(target: str) -> str:
        while target not in mods and "." in target:
            target = target.rpartition(".")[0]
        return target

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == FACE}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if base.split(".")[0] != FACE:
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in mods else resolve(base))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)
              and str(node.args[0].value).split(".")[0] == FACE):
            out.add(resolve(node.args[0].value))  # importlib.import_module("rtinfer.passes")
    out.discard(name)
    return out


def unit(module: str) -> str:
    parts = module.split(".")
    return FACE if len(parts) == 1 else ".".join(parts[:2])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_unit_has_a_layer(graph):
    units = {unit(m) for m in graph} - {FACE}
    missing = sorted(units - set(LAYERS))
    assert not missing, f"give these units a layer in LAYERS: {missing}"


def test_nothing_imports_the_package_face(graph):
    bad = sorted(m for m, deps in graph.items() if FACE in deps and m != FACE)
    assert not bad, f"import the defining module, not the package face `rtinfer`: {bad}"


def test_units_import_only_their_layer_and_below(graph):
    bad = []
    for m, deps in sorted(graph.items()):
        a = unit(m)
        if a == FACE:
            continue
        for d in sorted(deps):
            b = unit(d)
            if b != a and b != FACE and LAYERS.get(b, -1) > LAYERS.get(a, -1):
                bad.append(f"{m} (layer {LAYERS.get(a)}) imports {d} (layer {LAYERS.get(b)})")
    assert not bad, "upward imports:\n  " + "\n  ".join(bad)


def test_no_circles_between_units(graph):
    edges: dict[str, set[str]] = defaultdict(set)
    for m, deps in graph.items():
        for d in deps:
            if unit(m) != unit(d):
                edges[unit(m)].add(unit(d))
    assert not _cycles(edges)


def test_no_circles_between_modules(graph):
    """Inside a unit too (the ONNX frontend and its converters once imported each other). A
    package's ``__init__`` re-exporting its own modules is not a circle by itself; a module
    that imports its package's ``__init__`` back makes one. The IR core (graph, op table,
    printer, interpreter) is one family and is left out: ``Node`` infers types through the op
    table, whose entries name graphs and values."""
    edges = {}
    for m, deps in graph.items():
        if unit(m) == "rtinfer.ir":
            continue
        is_package = _modules()[m].name == "__init__.py"
        edges[m] = {d for d in deps if not (is_package and d.startswith(m + "."))}
    assert not _cycles(edges)


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from rtinfer.b import g\n    return g\n")
    (tmp_path / "c.py").write_text("from . import a\nimport rtinfer\n"
                                   "importlib.import_module('rtinfer.b')\n")
    mods = {"rtinfer.a": tmp_path / "a.py", "rtinfer.b": tmp_path / "b.py",
            "rtinfer.c": tmp_path / "c.py", "rtinfer": tmp_path / "__init__.py"}
    assert _imports("rtinfer.a", mods["rtinfer.a"], mods) == {"rtinfer.b"}
    assert _imports("rtinfer.c", mods["rtinfer.c"], mods) == {"rtinfer.a", "rtinfer.b", "rtinfer"}
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_module_is_over_800_lines():
    big = sorted(f"{f.relative_to(ROOT)}: {n} lines" for f in
                 (p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))
                 if (n := len(f.read_text().splitlines())) > MAX_LINES)
    assert not big, f"split these by family (shared/STYLE.md): {big}"
