"""The packages' import graph: dependencies point one way, with no cycle hidden behind an import
placed inside a function.

Every `import` / `from ... import` of the packages' modules is read from the source (module level
and inside functions alike), resolved to a module of the same package, and the graph must have no
cycle; the telemetry core must import nothing from the evaluators, and fi-evals-core nothing from
the instrumentors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = {name: Path(__file__).resolve().parents[2] / "packages" / name / "src" / name
       for name in ("fi_evals_core", "traceai_huggingface", "traceai_vllm")}


def modules(package: str) -> dict[str, Path]:
    root = SRC[package]
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `name` imports anywhere in its source (for `from a import b`,
    `a.b` when that is a module, else `a`)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph(package: str) -> dict[str, set[str]]:
    found = modules(package)
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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


def without_package_inits(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exporting its submodules is not a dependency of those submodules:
    an edge from a module to its own package's __init__ (or an ancestor's) is dropped."""
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()}


@pytest.mark.parametrize("package", sorted(SRC))
def test_no_import_cycles(package):
    edges = without_package_inits(graph(package))
    assert cycles(edges) == []


def test_the_walk_finds_a_cycle_behind_a_function_level_import(tmp_path, monkeypatch):
    """The checker itself: a cycle made by an import inside a function is found."""
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from . import b\n")
    (root / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setitem(SRC, "pkg", root)
    assert cycles(without_package_inits(graph("pkg"))) == [["pkg.a", "pkg.b"]]


def test_dependencies_point_one_way():
    core = graph("fi_evals_core")
    telemetry = {name: targets for name, targets in core.items() if name.startswith("fi_evals_core.telemetry")}
    into_evals = {name: sorted(t for t in targets if t.startswith("fi_evals_core.evals"))
                  for name, targets in telemetry.items()}
    assert {name: t for name, t in into_evals.items() if t} == {}  # the core knows no evaluator
    for path in SRC["fi_evals_core"].rglob("*.py"):
        text = path.read_text()
        assert "traceai_vllm" not in text.replace("traceai_vllm.", "") or "import traceai" not in text, path
        assert "import traceai_" not in text and "from traceai_" not in text, path
