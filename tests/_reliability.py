"""Helpers of the reliability suite (tests/test_reliability_*.py): run the ``pgolf`` command in
this process and judge its answer, plus a tiny training configuration."""
from __future__ import annotations

import contextlib
import io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from _tiny import tiny_values
from pgolf.cli import main as cli_main


@dataclass
class Answer:
    rc: int
    out: str
    err: str


def pgolf(*argv: str) -> Answer:
    """Run ``pgolf ARGV`` in this process; an exception escaping ``main`` (a traceback for a
    user) fails the test by propagating."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(list(argv))
        except SystemExit as e:  # argparse, or a signal during training
            rc = e.code if isinstance(e.code, int) else 1
    return Answer(rc, out.getvalue(), err.getvalue())


def assert_clear(answer: Answer, pattern: str) -> str:
    """The command failed (non-zero exit) with one error line matching ``pattern`` and no
    traceback; returns that line."""
    assert answer.rc != 0, f"exit 0 for a case that must fail:\n{answer.out[-2000:]}\n{answer.err[-2000:]}"
    assert "Traceback" not in answer.err + answer.out, answer.err
    lines = [line for line in answer.err.splitlines() if "error" in line]
    assert len(lines) == 1, f"expected one error line, got:\n{answer.err}"
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


def tiny_sets(data: Path, run_dir: Path, **extra) -> list[str]:
    """``--set`` arguments of the tiny configuration (:func:`_tiny.tiny_values`) on ``data``."""
    return [arg for k, v in tiny_values(data, run_dir, **extra).items() for arg in ("--set", f"{k}={v}")]


def train(data: Path, run_dir: Path, *flags: str, **extra) -> Answer:
    """``pgolf train`` of the tiny configuration."""
    return pgolf("train", "--preset", "demo", *tiny_sets(data, run_dir, **extra), *flags)


def copy_dataset(src: Path, dst: Path, *, manifest: bool = True) -> Path:
    """A copy of an embedded build (optionally without its manifest)."""
    shutil.copytree(src, dst)
    if not manifest:
        (dst / "manifest.json").unlink()
    return dst


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (to show that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

