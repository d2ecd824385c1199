"""An artifact's index, read without decoding the payloads, for tools that report where its bytes
go (``benchmarks/codec_artifacts.py``). The reader does not import this module, so a bundled
submission does not carry it."""
from __future__ import annotations

import json
import os

from pgolf.artifact.format import _PREFIX, MAGIC, ArtifactError, _index_json, _share


def read_index(path: str | os.PathLike) -> dict:
    """The JSON index of the artifact at ``path`` (see :mod:`pgolf.artifact.format`). Only the
    prefix and the header are read; :func:`pgolf.artifact.format.load_artifact` checks the rest."""
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:len(MAGIC)] != MAGIC:
            raise ArtifactError(f"{path}: not a pgolf artifact")
        _, version, hlen = _PREFIX.unpack(prefix)
        field = f.read(hlen)
    if len(field) < hlen:
        raise ArtifactError(f"{path}: truncated artifact: the file cannot hold its {hlen}-byte header")
    try:
        return json.loads(_index_json(field, version))
    except ValueError as e:
        raise ArtifactError(f"{path}: header is not a valid artifact header ({e})") from None


def codes_payload_bytes(index: dict) -> dict[str, int]:
    """Bytes of each QTensor's codes, by name, from an index: its own payload's length, or for
    codes in a shared stream (``"joint"`` or ``"ctx"``) that stream's length split among the
    tensors in it in proportion to their values (rows x cols), the last one taking the rounding.
    The values add up to every codes payload's length."""
    own, shared = {}, {}
    for e in index["tensors"]:
        if e["kind"] != "q":
            continue
        ref = e["codes"]
        if ref["codec"] in ("joint", "ctx"):
            shared.setdefault((ref["codec"], ref[ref["codec"]]), []).append((e["name"], e["rows"] * e["cols"]))
        else:
            own[e["name"]] = ref["length"]
    for (kind, j), members in shared.items():
        own.update(zip((n for n, _ in members), _share(index[kind][j]["length"], [v for _, v in members])))
    return {e["name"]: own[e["name"]] for e in index["tensors"] if e["name"] in own}
