"""The modules a bundle needs: the import graph of pgolf's own sources, read from their syntax.

Every ``import`` and ``from ... import`` statement counts, at module level or inside a function
(a lazy import is still an import the code may run), relative ones resolved against their package.
Only modules under the given top-level packages are followed; importing ``a.b.c`` also runs the
packages ``a`` and ``a.b``, so they belong to the closure too.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Module:
    """One source module: its dotted ``name``, whether it is a package (``__init__.py``), its file
    and text, and the names of the modules its statements import (``imports``: resolved, all roots)."""

    name: str
    is_package: bool
    path: Path
    source: str
    imports: tuple[str, ...]
    top_level_imports: tuple[str, ...]


def find_module(name: str, search_root: Path) -> Path | None:
    """The file of module ``name`` under ``search_root`` (``a/b.py`` or ``a/b/__init__.py``), or None."""
    base = search_root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(node: ast.AST, package: str, search_root: Path) -> list[str]:
    """Absolute names of the modules one import statement may import."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    # ``from a import b`` imports the module a.b when there is one, else the attribute b of a.
    subs = [f"{base}.{a.name}" for a in node.names if find_module(f"{base}.{a.name}", search_root)]
    return [base, *subs]


def read_module(name: str, search_root: Path) -> Module:
    """Parse module ``name`` from ``search_root``; raises ``FileNotFoundError`` naming it when absent."""
    path = find_module(name, search_root)
    if path is None:
        raise FileNotFoundError(f"module {name} has no source under {search_root}")
    source = path.read_text(encoding="utf-8")
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(source, filename=str(path))
    every, top = [], []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = _imported(node, package, search_root)
            every += names
            if node in tree.body:
                top += names
    return Module(name, is_package, path, source, tuple(dict.fromkeys(every)), tuple(dict.fromkeys(top)))


def parents(name: str) -> list[str]:
    """The packages whose ``__init__`` runs before module ``name``: ``a.b.c`` -> ``[a, a.b]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(entries: list[str], search_root: Path, roots: tuple[str, ...], *,
            skip: frozenset[str] = frozenset()) -> dict[str, Module]:
    """Every module under ``roots`` that ``entries`` reach through imports (and their packages),
    sorted by name; modules in ``skip`` are neither taken nor followed."""
    found: dict[str, Module] = {}
    pending = list(entries)
    while pending:
        name = pending.pop()
        if name in found or name in skip or name.split(".")[0] not in roots:
            continue
        module = read_module(name, search_root)
        found[name] = module
        pending += [n for n in (*module.imports, *parents(name)) if n not in found]
    return dict(sorted(found.items()))
