"""Atomic training checkpoints: a crash or a kill never leaves a half-written file behind."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.util.atomic import atomic_write_bytes


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (model, optimisers, step, loader, RNG, metrics...) atomically."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with a clear error when it is absent
    or unreadable."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a corrupt file surfaces from deep inside the unpickler
        raise ValueError(f"checkpoint {path} is unreadable: {e}") from e
