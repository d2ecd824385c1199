"""The official ``final_model.int8.ptz`` file: ``zlib.compress(torch.save(obj), level=9)`` of the
object :func:`pgolf.quant.official_int8.quantize_official_int8` builds, byte for byte what
``train_gpt.py`` writes for the same weights (same torch version: the bytes are torch.save's)."""
from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Mapping

import torch

from pgolf.quant.official_int8 import dequantize_official_int8, quantize_official_int8
from pgolf.util.atomic import atomic_write_bytes

ZLIB_LEVEL = 9


def official_int8_blob(state_dict: Mapping[str, torch.Tensor], roles: Mapping[str, str]) -> bytes:
    """The compressed file contents for ``state_dict``."""
    buf = io.BytesIO()
    torch.save(quantize_official_int8(state_dict, roles), buf)
    return zlib.compress(buf.getvalue(), level=ZLIB_LEVEL)


def save_official_int8(path: str | Path, state_dict: Mapping[str, torch.Tensor], roles: Mapping[str, str]) -> int:
    """Write :func:`official_int8_blob` atomically; returns its size in bytes."""
    blob = official_int8_blob(state_dict, roles)
    atomic_write_bytes(path, blob)
    return len(blob)


def load_official_int8(path: str | Path) -> dict[str, torch.Tensor]:
    """The dequantised state dict of an official int8 file, with a clear error for anything else."""
    path = Path(path)
    try:
        raw = zlib.decompress(path.read_bytes())
        obj = torch.load(io.BytesIO(raw), map_location="cpu")
    except FileNotFoundError:
        raise
    except Exception as e:  # zlib and the unpickler fail from deep inside on a foreign file
        raise ValueError(f"{path} is not an official int8+zlib export ({e})") from e
    return dequantize_official_int8(obj)
