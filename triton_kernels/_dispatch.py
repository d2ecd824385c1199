"""Choosing between the Triton kernel and the pure-torch reference of an op."""
from __future__ import annotations

import importlib.util
import os

import torch

IMPLS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_unavailable(*tensors: torch.Tensor) -> str | None:
    """Why the Triton path cannot run for these tensors (none given: on this machine), else None."""
    return _unavailable(all(t.is_cuda for t in tensors) if tensors else torch.cuda.is_available())


def _unavailable(on_cuda: bool) -> str | None:
    if not triton_available():
        return "triton is not installed (pip install triton)"
    if not (on_cuda or interpreter_enabled()):
        return "needs CUDA tensors, or TRITON_INTERPRET=1 to run on the CPU"
    return None


def resolve_impl(impl: str, *tensors: torch.Tensor) -> str:
    """Return ``"triton"`` or ``"torch"`` for ``impl`` and the tensors an op was given.

    ``auto`` picks Triton when triton is importable and the tensors are on CUDA or the Triton
    interpreter is enabled, and the reference otherwise. ``triton`` is an error when it cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    reason = _unavailable(bool(tensors) and all(t.is_cuda for t in tensors))
    if impl == "triton" and reason is not None:
        raise RuntimeError(f"impl='triton' {reason}")
    return "triton" if reason is None else "torch"
