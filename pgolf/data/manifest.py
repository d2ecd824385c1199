"""The shard folder's manifest vocabulary: its file name and format tag, the data error, and the
file hash the manifest records. Small on purpose: a bundled submission checks manifests without
carrying the corpus builder (:mod:`pgolf.data.build`)."""
from __future__ import annotations

import hashlib
import os

MANIFEST = "manifest.json"
FORMAT = "pgolf-shards-1"


class DataError(ValueError):
    """Bad input documents, tokenizer, shards or output directory; the message says which and why."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
