"""Training checkpoints: written atomically, only with finite weights, verified when read.

A checkpoint is a ``torch.save`` file, i.e. a zip archive whose every record carries a CRC-32;
:func:`load_checkpoint` checks all of them before unpickling (torch itself does not), so a
flipped byte is reported instead of resumed from. :func:`save_checkpoint` refuses a state whose
model weights are not all finite, so the last checkpoint on disk is always a good one.
"""
from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.util.atomic import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint cannot be written (non-finite weights, disk full) or read (damaged, not pgolf's)."""


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA when present) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def non_finite_tensors(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``tensors`` holding a NaN or an infinity."""
    return [name for name, t in tensors.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (model, optimisers, step, loader, RNG, metrics...) atomically.

    Raises :class:`CheckpointError` (the previous file untouched) when a tensor of
    ``state["model"]`` is not finite, or when the file cannot be written.
    """
    bad = non_finite_tensors(state.get("model", {}))
    if bad:
        raise CheckpointError(f"not writing {path}: the weights {', '.join(bad[:4])} hold NaN or inf at step "
                              f"{state.get('step')}; the previous checkpoint there (if any) is kept")
    try:
        atomic_write_bytes(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"could not write checkpoint {path} ({reason}); the previous one is kept; "
                              "free disk space or fix the folder's permissions") from None


def _verify(path: Path) -> None:
    """Check every record's CRC-32 of the zip archive ``torch.save`` wrote."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # zipfile raises whatever the damaged field leads to (BadZipFile, NotImplementedError...)
        raise CheckpointError(f"checkpoint {path} is damaged or not a torch.save file ({e})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: record {bad} fails its checksum")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or any ``torch.save`` file), after
    checking its checksums; a missing file raises ``FileNotFoundError``, a damaged one
    :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _verify(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a corrupt file surfaces from deep inside the unpickler
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from e


def pgolf_checkpoint(ck: Any, path: str | Path) -> dict[str, Any]:
    """``ck`` if it is a training checkpoint written by pgolf (model, config, step), else a
    :class:`CheckpointError` naming ``path``."""
    if not isinstance(ck, dict) or not {"model", "config", "step"} <= set(ck):
        raise CheckpointError(f"{path} is not a pgolf training checkpoint (no model/config/step entries); "
                              "give the checkpoint.pt of a pgolf run, or its model.pgolf with --artifact")
    return ck
