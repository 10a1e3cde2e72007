"""Layering, read from the source with `ast` (nothing is imported):

    fastpass.kernel  -- the protocol: imports no filesystem, filter, process or CLI code
    fastpass.transport -- where requests come from: no operations, filter, worker, process or
                        CLI code (the worker runs its loop over a transport, not the reverse)
    fastpass.fs      -- the operations: imports no filter, worker, supervisor or CLI code
    fastpass.filters -- hooks around the operations: no worker, supervisor or CLI code; the
                        filter API and the built-in filters see ABI types, not the operations
    fastpass.options -- the mount options table, below the CLI and the bench that both use it

and no import cycle anywhere in the package.  Function-level and relative imports count too:
a cycle through a function's import is one refactoring away from failing at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastpass

PKG = Path(fastpass.__file__).resolve().parent

RULES = {
    "kernel": ("fastpass.fs", "fastpass.filters", "fastpass.worker", "fastpass.supervisor", "fastpass.cli"),
    "transport": ("fastpass.fs", "fastpass.filters", "fastpass.worker", "fastpass.supervisor", "fastpass.processes",
                  "fastpass.cli"),
    "fs": ("fastpass.filters", "fastpass.worker", "fastpass.supervisor", "fastpass.cli"),
    "filters": ("fastpass.worker", "fastpass.supervisor", "fastpass.cli"),
}
# What a filter author sees: the contract and the built-ins (examples of it) stay off the operations.
FILTER_API = ("api.py", "readonly.py", "hide.py", "audit.py", "quota.py")
FILTER_API_FORBIDDEN = ("fastpass.fs", "fastpass.filters.stack", "fastpass.filters.load")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module a source file may import; `from a import b` counts as both a and a.b."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _violations(imports: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imports if any(m == f or m.startswith(f + ".") for f in forbidden))


def _graph() -> dict[str, set[str]]:
    """Each fastpass module -> the fastpass modules it imports, with the packages above them (whose
    __init__ runs first)."""
    modules = {_module_name(path): path for path in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path.read_text(), name, path.name == "__init__.py"):
            parts = imported.split(".")
            targets.update(m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules)
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph`: each group of modules that reach each other (Tarjan's strongly
    connected components), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _files(layer: str) -> list[Path]:
    return sorted((PKG / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_has_sources(layer: str) -> None:
    assert _files(layer), f"no sources under fastpass/{layer}"


@pytest.mark.parametrize(
    ("layer", "path"),
    [(layer, path) for layer in sorted(RULES) for path in _files(layer)],
    ids=lambda v: v if isinstance(v, str) else str(v.relative_to(PKG)),
)
def test_layer_imports(layer: str, path: Path) -> None:
    imports = imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py")
    bad = _violations(imports, RULES[layer])
    assert not bad, f"fastpass/{path.relative_to(PKG)} imports {bad}"


def test_no_import_cycle() -> None:
    found = cycles(_graph())
    assert not found, "modules that import each other, directly or not: " + "; ".join(", ".join(g) for g in found)


def test_options_table_is_below_cli_and_bench() -> None:
    path = PKG / "options.py"
    bad = _violations(imported_modules(path.read_text(), "fastpass.options"),
                      ("fastpass.cli", "fastpass.bench", "fastpass.supervisor", "fastpass.stats"))  # fmt: skip
    assert not bad, f"fastpass/options.py imports {bad}"


@pytest.mark.parametrize("name", FILTER_API)
def test_filter_api_imports(name: str) -> None:
    path = PKG / "filters" / name
    bad = _violations(imported_modules(path.read_text(), _module_name(path)), FILTER_API_FORBIDDEN)
    assert not bad, f"fastpass/filters/{name} imports {bad}"


# --- the checker itself --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import fastpass.worker", "fastpass.kernel.abi", ["fastpass.worker"]),
        ("from fastpass import cli", "fastpass.kernel.abi", ["fastpass.cli"]),
        ("from fastpass.fs.context import Fs", "fastpass.kernel.abi", ["fastpass.fs.context",
                                                                        "fastpass.fs.context.Fs"]),
        ("def f():\n    from ..fs import table", "fastpass.kernel.abi", ["fastpass.fs", "fastpass.fs.table"]),
        ("from .. import supervisor", "fastpass.kernel.encode", ["fastpass.supervisor"]),
        ("from . import abi", "fastpass.kernel.encode", []),
        ("import fastpass.fsx", "fastpass.kernel.abi", []),  # a prefix, not the package
        ("from fastpass import _linux", "fastpass.kernel.mount", []),
    ],
)
def test_checker_finds_violations(source: str, module: str, expected: list[str]) -> None:
    assert _violations(imported_modules(source, module), RULES["kernel"]) == expected


def test_cycle_finder() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"cli": {"bench.runner"}, "bench.runner": {"cli", "options"}, "options": set()}) == [
        ["bench.runner", "cli"]]


def test_checker_relative_import_in_package_init() -> None:
    imports = imported_modules("from . import worker", "fastpass.fs", is_package=True)
    assert "fastpass.fs.worker" in imports and not _violations(imports, RULES["fs"])
    imports = imported_modules("from .. import worker", "fastpass.fs", is_package=True)
    assert _violations(imports, RULES["fs"]) == ["fastpass.worker"]


def _sets_fs_attributes(source: str) -> list[str]:
    """`fs.NAME = ...` (or +=) anywhere in `source`: a variable named fs whose attribute is assigned."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []  # fmt: skip
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "fs":
                found.append(f"line {t.lineno}: fs.{t.attr}")
    return found


def test_fs_is_built_once() -> None:
    """`Fs` takes what the kernel agreed and what the filters need when it is made; no module sets
    its attributes afterwards (fastpass.fs.context builds it)."""
    offenders = {str(p.relative_to(PKG)): found for p in sorted(PKG.rglob("*.py"))
                 if (found := _sets_fs_attributes(p.read_text()))}  # fmt: skip
    assert offenders == {}
    assert _sets_fs_attributes("def f(fs):\n    fs.passthrough = 1\n    fs.n += 1\n") == ["line 2: fs.passthrough",
                                                                                          "line 3: fs.n"]  # fmt: skip


MAX_LINES = 500
MAX_METHODS = 25


def _oversized(path: Path) -> list[str]:
    """What makes a module big: its line count over MAX_LINES, a class over MAX_METHODS methods."""
    source = path.read_text()
    found = [f"{len(source.splitlines())} lines"] if len(source.splitlines()) > MAX_LINES else []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
            if methods > MAX_METHODS:
                found.append(f"class {node.name}: {methods} methods")
    return found


def test_a_big_module_says_why_at_its_head() -> None:
    """A module over 500 lines, or with a class over 25 methods, says why in a `Size:` paragraph of
    its docstring: being big is a choice to explain, or a split still to make."""
    unexplained = {}
    for path in sorted(PKG.rglob("*.py")):
        if (found := _oversized(path)) and "\nSize: " not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            unexplained[str(path.relative_to(PKG))] = found
    assert unexplained == {}
