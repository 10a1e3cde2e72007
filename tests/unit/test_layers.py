"""Layering, read from the source with `ast` (nothing is imported):

    fastpass.kernel  -- the protocol: imports no filesystem, filter, process or CLI code
    fastpass.fs      -- the operations: imports no filter, worker, supervisor or CLI code
    fastpass.filters -- hooks around the operations: no worker, supervisor or CLI code; the
                        filter API and the built-in filters see ABI types, not the operations

Function-level and relative imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastpass

PKG = Path(fastpass.__file__).resolve().parent

RULES = {
    "kernel": ("fastpass.fs", "fastpass.filters", "fastpass.worker", "fastpass.supervisor", "fastpass.cli"),
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


def test_checker_relative_import_in_package_init() -> None:
    imports = imported_modules("from . import worker", "fastpass.fs", is_package=True)
    assert "fastpass.fs.worker" in imports and not _violations(imports, RULES["fs"])
    imports = imported_modules("from .. import worker", "fastpass.fs", is_package=True)
    assert _violations(imports, RULES["fs"]) == ["fastpass.worker"]
