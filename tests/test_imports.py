"""The package's shape: imports run one way. No two mmlib modules import each other, directly or
through others (imports inside functions count too), and no module takes a private name
(`_name`) from another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmlib"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "reference" not in p.relative_to(PACKAGE).parts}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(module imported, name taken or '', line) of every mmlib import in a file, wherever it sits."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "mmlib"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "mmlib":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub, "", node.lineno) if sub in modules else (base, alias.name, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target, _, _ in _imports(path, modules):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_mmlib_module_imports_itself_back_through_others():
    assert _circles(_graph()) == []


def test_no_module_takes_a_private_name_from_another():
    modules = _modules()
    private = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} from {target}"
               for path in modules.values() for target, name, line in _imports(path, modules)
               if name.startswith("_") and not name.startswith("__")]
    assert private == []


@pytest.mark.parametrize("path", sorted(_modules().values()), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_every_module_reads_in_one_sitting(path):
    assert len(path.read_text().splitlines()) <= 500


def test_the_experiments_rooms_import_one_way():
    """plan reads nothing of run or results; results reads nothing of run."""
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("mmlib.experiments.plan"):
            assert not [t for t in targets if t.startswith(("mmlib.experiments.run", "mmlib.experiments.results"))], name
        if name.startswith("mmlib.experiments.results"):
            assert not [t for t in targets if t.startswith("mmlib.experiments.run")], name


def test_every_folder_of_mmlib_is_a_package_with_its_own_docstring():
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "reference" not in p.relative_to(PACKAGE).parts}
    assert sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").is_file()) == []


@pytest.mark.parametrize("script", sorted((PACKAGE.parent / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_every_benchmark_imports_what_exists(script):
    """A benchmark names only modules and names the package has (they are not run in CI)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
