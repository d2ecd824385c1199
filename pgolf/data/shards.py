"""The official token shard format (``fineweb_train_000000.bin`` and friends).

Layout, all little-endian::

    offset 0     int32[256] header: [0] = 20240520 (magic), [1] = 1 (version), [2] = N, rest 0
    offset 1024  uint16[N]  token ids

so a valid file is exactly ``1024 + 2 * N`` bytes. Anything else is a corrupt shard and
raises :class:`ShardError`, whose message names the file and the problem.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np

from pgolf.util.atomic import atomic_write_bytes

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN = 65535
# Rows scanned at a time when checking ids against a vocabulary: bounds the temporary mask.
_SCAN_TOKENS = 1 << 24


class ShardError(ValueError):
    """A shard file is missing, malformed, or holds ids outside the vocabulary."""


def _as_tokens(tokens: Any) -> np.ndarray:
    """Validate ``tokens`` (numpy, torch, or a sequence of ints) and return little-endian uint16."""
    if hasattr(tokens, "detach"):  # a torch tensor, without importing torch here
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.size == 0:
        return np.zeros(0, dtype="<u2")
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr > MAX_TOKEN))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"token {int(arr[i])} at index {i} is outside 0..{MAX_TOKEN}")
    return arr.astype("<u2", copy=False)


def shard_header(num_tokens: int) -> bytes:
    """The 1024-byte header of a shard holding ``num_tokens`` tokens."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, num_tokens
    return header.tobytes()


def encode_shard(tokens: Any) -> bytes:
    """The exact bytes of a shard holding ``tokens`` (header then uint16 ids)."""
    arr = _as_tokens(tokens)
    return shard_header(arr.size) + arr.tobytes()


def write_shard(path: str | os.PathLike, tokens: Any) -> int:
    """Write ``tokens`` as a shard at ``path`` atomically; returns the bytes written (1024 + 2N).

    Written through :func:`pgolf.util.atomic.atomic_write_bytes`, so a reader never sees a
    half-written shard.
    """
    data = encode_shard(tokens)
    atomic_write_bytes(path, data)
    return len(data)


def shard_token_count(path: str | os.PathLike) -> int:
    """Validate a shard's header and size and return its token count N."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard {path}: not a file")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"shard {path}: {size} bytes is too short for the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ShardError(f"shard {path}: wrong magic {int(header[0])} (expected {MAGIC})")
    if header[1] != VERSION:
        raise ShardError(f"shard {path}: unsupported version {int(header[1])} (expected {VERSION})")
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    if n < 0 or size != expected:
        kind = "truncated" if size < expected else "oversized"
        raise ShardError(f"shard {path}: {kind}: header says {n} tokens, so {expected} bytes, "
                         f"but the file has {size} bytes")
    return n


def read_shard(path: str | os.PathLike, *, vocab_size: int | None = None, mmap: bool = True) -> np.ndarray:
    """Return the tokens of a validated shard as a uint16 array.

    With ``mmap=True`` (default) the array is a read-only :class:`numpy.memmap`: slicing it
    reads only the pages touched. With ``vocab_size`` every id is checked to be below it
    (this reads the whole file once) and the first offending index and value are reported.
    """
    path = Path(path)
    n = shard_token_count(path)
    if n == 0:
        tokens = np.zeros(0, dtype="<u2")
    elif mmap:
        tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    else:
        tokens = np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)
    if vocab_size is not None:
        for start in range(0, n, _SCAN_TOKENS):
            bad = np.flatnonzero(tokens[start:start + _SCAN_TOKENS] >= vocab_size)
            if bad.size:
                i = start + int(bad[0])
                raise ShardError(f"shard {path}: token id {int(tokens[i])} at index {i} is >= "
                                 f"vocab_size {vocab_size}")
    return tokens


def shard_files(pattern: str) -> list[Path]:
    """The files matching ``pattern`` in sorted order, each checked to be a valid shard.

    Raises :class:`ShardError` when nothing matches (naming the pattern) or when a match is
    not a shard (naming the file).
    """
    files = [Path(p) for p in sorted(glob.glob(pattern))]
    if not files:
        raise ShardError(f"no shard files match {pattern!r}")
    for f in files:
        shard_token_count(f)
    return files


def load_tokens(pattern: str, *, vocab_size: int | None = None) -> np.ndarray:
    """All tokens of the shards matching ``pattern``, concatenated in file order (a copy)."""
    return np.concatenate([read_shard(f, vocab_size=vocab_size) for f in shard_files(pattern)])
