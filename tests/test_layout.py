"""The import rule of pgolf's layout, enforced by import-linter (contracts in pyproject.toml):
pgolf's packages import only downhill along the data flow, nothing imports in a cycle (type-only
imports included), and triton_kernels never imports pgolf.

Each mutant copies the two packages into a temporary folder, adds one violating import and
shows that the same contracts then fail, naming the broken contract.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter")

LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename='pyproject.toml'))"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_the_repository_keeps_every_contract():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def _copy(tmp_path: Path) -> Path:
    for pkg in ("pgolf", "triton_kernels"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_line(path: Path, line: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest if sep else line + "\n" + text)


MUTANTS = {
    "upstream import (model -> pipeline)": ("pgolf/model/roles.py", "import pgolf.pipeline",
                                            "pgolf imports only downhill, along the data flow BROKEN"),
    "upstream import (train -> eval)": ("pgolf/train/loop.py", "from pgolf.eval import flat",
                                        "pgolf imports only downhill, along the data flow BROKEN"),
    "triton_kernels -> pgolf": ("triton_kernels/_dispatch.py", "import pgolf.util.atomic",
                                "triton_kernels never imports pgolf BROKEN"),
    "type-only cycle inside a package": (
        "pgolf/model/roles.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pgolf.model.layers import CastedLinear",
        "no import cycles, at any depth (type-only imports included) BROKEN"),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_a_violating_import_breaks_a_contract(tmp_path, name):
    file, line, verdict = MUTANTS[name]
    root = _copy(tmp_path)
    _add_line(root / file, line)
    out = _lint(root)
    assert out.returncode != 0, out.stdout
    assert verdict in out.stdout, out.stdout
