"""The codebase's layering rules, checked on the source (issue 15): no import cycles (imports inside functions
included; ``if TYPE_CHECKING:`` imports are annotations, not run-time dependencies), short functions in the
library packages, a Trainer that stays small, and tests that import the installed package instead of editing
``sys.path``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("main", "SOTA_methods", "bench")
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if isinstance(node, ast.Import):
        bases = [a.name for a in node.names]
        candidates = bases
    else:
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        candidates = [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    for c in candidates:
        while c and c not in modules:  # the most specific project module the import names
            c = c.rpartition(".")[0]
        if c and c != name:
            out.add(c)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = set().union(*(_targets(name, path, n, modules) for n in _imports(tree)))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_package_init_edge(a: str, b: str) -> bool:
    """A package's ``__init__`` importing its own submodules (and they importing siblings through it) is how a
    package exposes its API, not a layering cycle: edges between a package and its own submodules are ignored."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycles():
    graph = {a: {b for b in bs if not _is_package_init_edge(a, b)} for a, bs in import_graph().items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_point_one_way():
    """``main`` is the library; ``SOTA_methods`` builds on it; ``bench`` on both.  Never backwards."""
    graph = import_graph()
    for name, targets in graph.items():
        layer = name.split(".")[0]
        allowed = {"main": {"main"}, "SOTA_methods": {"main", "SOTA_methods"}}.get(layer, set(PACKAGES))
        assert {t.split(".")[0] for t in targets} <= allowed, name


@pytest.mark.parametrize("package", ["main", "SOTA_methods"])
def test_functions_are_short(package):
    long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_trainer_stays_small():
    tree = ast.parse((ROOT / "main" / "trainer.py").read_text(encoding="utf-8"))
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 < 250
    assert len((ROOT / "main" / "trainer.py").read_text(encoding="utf-8").splitlines()) < 250


def test_no_module_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for d in (*PACKAGES, "tests", "Scripts") for p in (ROOT / d).rglob("*.py")
                 if "sys.path.insert" in p.read_text(encoding="utf-8") and p.name != "test_structure.py"]
    assert offenders == []
