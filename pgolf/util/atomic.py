"""Writing files so that readers see the old version or the new one, never half of either.

Every file pgolf writes whole (shards, manifests, tokenizers, checkpoints, artifacts, reports)
goes through :func:`atomic_write_bytes`: a temp file in the same folder, ``fsync``, rename over
the target, ``fsync`` of the folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write_bytes(path: str | os.PathLike, write: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically: ``write`` is the file's bytes, or a function that writes them to
    the open file object. The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if isinstance(write, (bytes, bytearray, memoryview)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
