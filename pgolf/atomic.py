"""Writing files so that readers see the old version or the new one, never half of either."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, write) -> None:
    """Write a file through ``write(fileobj)`` into a temp file, fsync it, then rename it over
    ``path`` (and fsync the directory), so readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
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
