"""Where a benchmark number came from: machine, versions, git commit and date, one dict per run.

Every result row carries this dict, so a number can be traced to the code and hardware that made
it. Anything that cannot be found is recorded as ``"n/a"`` rather than guessed.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from triton_kernels._dispatch import interpreter_enabled

REPO = Path(__file__).resolve().parents[1]
NA = "n/a"


def collect_provenance(device: torch.device | str) -> dict:
    """Machine, GPU, driver, CUDA/torch/triton/python versions, CPU, git sha + dirty, UTC date."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    sha, dirty = _git_state()
    cpu = _cpu_model()
    gpu = torch.cuda.get_device_name(device) if cuda else NA
    return {
        "machine": gpu if cuda else f"CPU {cpu}",
        "device": device.type,
        "gpu": gpu,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "driver": _nvidia_driver(),
        "cuda": torch.version.cuda or NA,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "triton_interpret": interpreter_enabled(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": _cpu_count(),
        "os": platform.platform(),
        "host": platform.node() or NA,
        "git_sha": sha,
        "git_dirty": dirty,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def describe(provenance: dict) -> str:
    """One line naming the machine and versions behind a set of results."""
    p = provenance
    dirty = " (dirty)" if p["git_dirty"] else ""
    parts = [p["machine"], f"driver {p['driver']}", f"CUDA {p['cuda']}", f"torch {p['torch']}",
             f"triton {p['triton']}" + (" (interpreter)" if p["triton_interpret"] else ""),
             f"python {p['python']}", f"git {p['git_sha'][:12]}{dirty}", p["date_utc"]]
    return ", ".join(parts)


def _git_state() -> tuple[str, bool | None]:
    """HEAD's sha and whether the tree differs from it (recorded results themselves excluded)."""
    if shutil.which("git") is None:
        return NA, None
    try:
        sha = _run(["git", "rev-parse", "HEAD"])
        status = _run(["git", "status", "--porcelain", "--", ".", ":(exclude)benchmarks/results"])
    except (OSError, subprocess.SubprocessError):
        return NA, None
    return sha, bool(status)


def _nvidia_driver() -> str:
    if shutil.which("nvidia-smi") is None:
        return NA
    try:
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return NA
    return out.splitlines()[0].strip() if out else NA


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True,
                          timeout=20).stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or NA


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return NA
