"""The model artifact: one checked file holding config, metadata and every tensor.

File layout (version 2; integers little-endian; pinned by ``tests/golden/artifact_v2.pgolf``)::

    offset         size  field
    0              8     magic b"PGOLFART"
    8              4     uint32 format version (2; version 1 files are still read)
    12             4     uint32 H, bytes of the JSON header
    16             H     JSON header, UTF-8, sorted keys, no whitespace
    16 + H         P     payloads, back to back (P = header["payload_bytes"])
    16 + H + P     32    SHA-256 of every byte before it

The header is ``{"config": {...}, "joint": [payload, ...], "meta": {...}, "payload_bytes": P,
"tensors": [entry, ...]}`` with entries in insertion order (``joint`` is new in version 2; a
version 1 header has none). Every entry has ``name``, ``shape`` (the tensor's own shape),
``dtype`` (``"float32"``, ``"bfloat16"``, ``"int64"``, ...) and ``kind``:

* ``"raw"``: stored losslessly in its dtype (little-endian bytes, C order), one payload ``data``;
* ``"q"``: a :class:`~pgolf.quant.qtensor.QTensor`: ``bits``, ``rows``, ``cols`` and two payloads,
  ``codes`` (int8 codes, rows x cols) and ``scale`` (float16 little-endian, one per row).

A payload is ``{"codec": c, "offset": o, "length": n}``, ``o`` counted from the start of the
payload section. Codecs: ``"rans"`` (:func:`pgolf.codec.rans_encode`, codes only), ``"zstd"``
(level 22), ``"zlib"`` (level 9) and ``"raw"`` (the bytes themselves; for codes one byte per
value). With ``codec="zstd"``/``"zlib"`` codes are one byte per value through that compressor;
with ``codec="rans"`` codes use the rANS coder and the other payloads zstd. Any payload that a
compressor would make larger is stored ``"raw"`` instead.

Joint payloads (version 2, ``codec="rans"``): the QTensors of one bit width whose ``cols`` are
multiples of :data:`pgolf.codec.MIN_PIECE` may share one :func:`pgolf.codec.rans_encode_set`
stream, ``header["joint"][j]`` (a ``"rans"`` payload), when that is smaller than a stream each.
Their ``codes`` are then ``{"codec": "joint", "joint": j}``; the stream holds the codes of every
entry referring to ``j``, in header order, concatenated (:func:`pgolf.codec.rans_decode_set`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pgolf import codec as _codec
from pgolf.quant.qtensor import QTensor
from pgolf.util.atomic import atomic_write_bytes

MAGIC = b"PGOLFART"
VERSION = 2
READABLE_VERSIONS = (1, 2)
CODECS = (*_codec.COMPRESSORS, "raw")
_PREFIX = struct.Struct("<8sII")
_DIGEST = 32
_DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")}


class ArtifactError(ValueError):
    """An artifact file is malformed or not what the caller expected; the message says what."""


@dataclass(frozen=True)
class ArtifactInfo:
    """What :func:`save_artifact` wrote: ``total_bytes`` equals ``os.path.getsize(path)``;
    ``tensor_bytes`` maps each name to the bytes of its payloads (codes + scales for ``"q"``;
    a joint payload is shared out among its tensors in proportion to their values)."""

    path: Path
    total_bytes: int
    header_bytes: int
    tensor_bytes: dict[str, int]


@dataclass
class Artifact:
    """A loaded artifact: tensors are :class:`QTensor` or ``torch.Tensor`` as they were saved."""

    config: dict[str, Any]
    meta: dict[str, Any]
    tensors: dict[str, QTensor | torch.Tensor] = field(default_factory=dict)


def _dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise ArtifactError(f"dtype {dtype} cannot be stored; supported: {', '.join(_DTYPES)}")


def _compress(data: bytes, codec: str) -> tuple[str, bytes]:
    """``(codec, payload)``: ``data`` through the compressor, or ``("raw", data)`` if that is smaller."""
    if codec == "zstd":
        import zstandard
        packed = zstandard.ZstdCompressor(level=22).compress(data)
    elif codec == "zlib":
        packed = zlib.compress(data, 9)
    else:
        return "raw", data
    return (codec, packed) if len(packed) < len(data) else ("raw", data)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def save_artifact(path: str | os.PathLike, *, config: dict, tensors: Mapping[str, QTensor | torch.Tensor],
                  codec: str = "rans", meta: dict | None = None) -> ArtifactInfo:
    """Write ``tensors`` (QTensors and plain tensors) with ``config`` and ``meta`` to ``path``.

    ``codec`` picks how QTensor codes are stored (``"rans"``, ``"zstd"``, ``"zlib"`` or ``"raw"``);
    plain tensors are stored losslessly in their own dtype. The file is written to a temporary
    name in the same folder, fsynced and renamed over ``path``, so readers never see half a file.
    ``config`` and ``meta`` must be JSON-serialisable.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    side = "zstd" if codec == "rans" else codec  # how scales and raw tensors are compressed
    entries, chunks, sizes, offset = [], [], {}, 0

    def payload(data: bytes, how: str) -> dict:
        nonlocal offset
        if how == "rans":
            name, blob = "rans", data
        else:
            name, blob = _compress(data, how)
        chunks.append(blob)
        ref = {"codec": name, "offset": offset, "length": len(blob)}
        offset += len(blob)
        return ref

    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if isinstance(t, QTensor):
            rows, cols = t.codes.shape
            if rows * cols != math.prod(t.shape):
                raise ValueError(f"tensor {name!r}: codes {tuple(t.codes.shape)} do not hold shape {tuple(t.shape)}")
    streams, joints, shares = {}, [], {}  # name -> own rANS stream; joint payloads; name -> (joint, bytes)
    if codec == "rans":
        sets: dict[int, list[str]] = {}
        for name, t in tensors.items():
            if isinstance(t, QTensor):
                sets.setdefault(t.bits, []).append(name)
        for bits, names in sets.items():
            qs = [tensors[n] for n in names]
            joint, own = _codec.rans_encode_set([q.codes.detach().cpu() for q in qs], bits,
                                                scales=[q.scale for q in qs])
            streams.update((n, s) for n, s in zip(names, own) if s is not None)
            if joint is None:
                continue
            members = [(n, q.codes.numel()) for n, q, s in zip(names, qs, own) if s is None]
            total, given = sum(k for _, k in members), 0
            for i, (n, k) in enumerate(members):
                share = len(joint) - given if i == len(members) - 1 else len(joint) * k // total
                shares[n], given = (len(joints), share), given + share
            joints.append(payload(joint, "rans"))

    for name, t in tensors.items():
        start = offset
        if isinstance(t, QTensor):
            rows, cols = t.codes.shape
            if name in shares:
                j, share = shares[name]
                codes_ref, start = {"codec": "joint", "joint": j}, start - share
            else:
                blob = streams[name] if codec == "rans" else t.codes.detach().cpu().contiguous().numpy().tobytes()
                codes_ref = payload(blob, codec)
            entry = {"name": name, "kind": "q", "shape": list(t.shape), "dtype": _dtype_name(t.dtype),
                     "bits": t.bits, "rows": rows, "cols": cols,
                     "codes": codes_ref, "scale": payload(_tensor_bytes(t.scale), side)}
        elif isinstance(t, torch.Tensor):
            entry = {"name": name, "kind": "raw", "shape": list(t.shape), "dtype": _dtype_name(t.dtype),
                     "data": payload(_tensor_bytes(t), side)}
        else:
            raise TypeError(f"tensor {name!r} must be a QTensor or torch.Tensor, got {type(t).__name__}")
        entries.append(entry)
        sizes[name] = offset - start

    header_obj = {"config": config, "joint": joints, "meta": meta or {}, "payload_bytes": offset, "tensors": entries}
    try:
        header = json.dumps(header_obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"config and meta must be JSON-serialisable: {e}") from None
    body = b"".join([_PREFIX.pack(MAGIC, VERSION, len(header)), header, *chunks])
    data = body + hashlib.sha256(body).digest()

    path = Path(path)
    atomic_write_bytes(path, lambda f: f.write(data))
    size = os.path.getsize(path)
    if size != len(data):
        raise OSError(f"{path}: wrote {len(data)} bytes but the file has {size}")
    return ArtifactInfo(path=path, total_bytes=size, header_bytes=len(header), tensor_bytes=sizes)


def _decompress(blob: bytes, codec: str, what: str) -> bytes:
    try:
        if codec == "zstd":
            import zstandard
            return zstandard.ZstdDecompressor().decompress(blob)
        if codec == "zlib":
            return zlib.decompress(blob)
    except Exception as e:  # the compressors raise their own error types
        raise ArtifactError(f"{what}: {codec} payload does not decompress: {e}") from None
    if codec == "raw":
        return blob
    raise ArtifactError(f"{what}: unknown codec {codec!r}")


def _field(entry: dict, key: str, kind: type, what: str):
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ArtifactError(f"{what}: header field {key!r} missing or not {kind.__name__}: {value!r}")
    return value


def _payload(ref: Any, payloads: bytes, what: str) -> tuple[str, bytes]:
    """``(codec, bytes)`` of a payload reference, its bounds checked."""
    if not isinstance(ref, dict):
        raise ArtifactError(f"{what}: payload reference is not an object: {ref!r}")
    off, n = _field(ref, "offset", int, what), _field(ref, "length", int, what)
    if off < 0 or n < 0 or off + n > len(payloads):
        raise ArtifactError(f"{what} payload [{off}, {off + n}) outside the {len(payloads)} payload bytes")
    return _field(ref, "codec", str, what), payloads[off:off + n]


def _read_joints(header: dict, entries: list[dict], payloads: bytes) -> dict[str, torch.Tensor]:
    """Decode every joint payload: name -> 1-D int8 codes of each tensor that refers to one."""
    joints = header.get("joint", [])
    if not isinstance(joints, list):
        raise ArtifactError("header field 'joint' is not a list")
    members: list[list[dict]] = [[] for _ in joints]
    for e in entries:
        ref = e.get("codes")
        if e.get("kind") == "q" and isinstance(ref, dict) and ref.get("codec") == "joint":
            j = ref.get("joint")
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < len(joints):
                raise ArtifactError(f"tensor {e.get('name')!r}: codes refer to joint payload {j!r} of {len(joints)}")
            members[j].append(e)
    out = {}
    for j, (ref, group) in enumerate(zip(joints, members)):
        names = ", ".join(repr(e.get("name")) for e in group)
        what = f"joint rANS payload {j} (tensors {names})"
        c, data = _payload(ref, payloads, what)
        if c != "rans" or not group:
            raise ArtifactError(f"{what}: codec {c!r} with {len(group)} tensors is not a joint rANS payload")
        sizes = [_field(e, "rows", int, what) * _field(e, "cols", int, what) for e in group]
        try:
            codes = _codec.rans_decode_set(data, sizes)
        except _codec.CodecError as err:
            raise ArtifactError(f"{what}: {err}") from None
        out.update((e.get("name"), torch.from_numpy(a)) for e, a in zip(group, codes))
    return out


def _read_tensor(entry: dict, payloads: bytes, joint: dict[str, torch.Tensor]) -> QTensor | torch.Tensor:
    name = _field(entry, "name", str, "tensor entry")
    what = f"tensor {name!r}"
    shape = tuple(_field(entry, "shape", list, what))
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ArtifactError(f"{what}: bad shape {list(shape)}")
    dtype = _DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise ArtifactError(f"{what}: unsupported dtype {entry.get('dtype')!r}")

    def blob(key: str) -> tuple[str, bytes]:
        return _payload(_field(entry, key, dict, what), payloads, f"{what}: {key}")

    def fixed(data: bytes, dt: torch.dtype, numel: int, key: str) -> torch.Tensor:
        itemsize = torch.tensor([], dtype=dt).element_size()
        if len(data) != numel * itemsize:
            raise ArtifactError(f"{what}: {key} has {len(data)} bytes, {numel} x {dt} needs {numel * itemsize}")
        return torch.frombuffer(bytearray(data), dtype=dt) if numel else torch.zeros(0, dtype=dt)

    kind = entry.get("kind")
    if kind == "raw":
        c, data = blob("data")
        return fixed(_decompress(data, c, what), dtype, math.prod(shape), "data").reshape(shape)
    if kind != "q":
        raise ArtifactError(f"{what}: unknown kind {kind!r}")
    bits, rows, cols = (_field(entry, k, int, what) for k in ("bits", "rows", "cols"))
    if rows * cols != math.prod(shape):
        raise ArtifactError(f"{what}: codes {rows} x {cols} do not hold shape {list(shape)}")
    c, data = ("joint", b"") if name in joint else blob("codes")
    if c == "joint":
        codes = joint[name].reshape(rows, cols)
    elif c == "rans":
        try:
            codes = _codec.rans_decode(data, max_values=rows * cols)
        except _codec.CodecError as e:
            raise ArtifactError(f"{what}: {e}") from None
        if codes.shape != (rows, cols):
            raise ArtifactError(f"{what}: rANS codes have shape {codes.shape}, header says ({rows}, {cols})")
        codes = torch.from_numpy(codes)
    else:
        codes = fixed(_decompress(data, c, what), torch.int8, rows * cols, "codes").reshape(rows, cols)
    c, data = blob("scale")
    scale = fixed(_decompress(data, c, what), torch.float16, rows, "scale")
    try:
        return QTensor(codes=codes, scale=scale, bits=bits, shape=shape, dtype=dtype)
    except ValueError as e:
        raise ArtifactError(f"{what}: {e}") from None


def load_artifact(path: str | os.PathLike, *, expected: Mapping[str, tuple[int, ...]] | None = None) -> Artifact:
    """Read and verify an artifact written by :func:`save_artifact`.

    Checks, each failure an :class:`ArtifactError` naming it: magic, format version, file length
    (truncated or trailing bytes), SHA-256 checksum, header structure, every payload's bounds
    and decoding. With ``expected`` (name -> shape), also that exactly those tensors are present
    with those shapes (missing, unexpected and shape-mismatched tensors are all named).
    """
    data = Path(path).read_bytes()
    if len(data) < _PREFIX.size + _DIGEST:
        raise ArtifactError(f"{path}: truncated artifact ({len(data)} bytes)")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{path}: bad magic {magic!r}, not a pgolf artifact (expected {MAGIC!r})")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(f"{path}: unsupported artifact format version {version} (this pgolf reads "
                            f"{', '.join(map(str, READABLE_VERSIONS))})")
    if _PREFIX.size + hlen + _DIGEST > len(data):
        raise ArtifactError(f"{path}: truncated artifact: {len(data)} bytes cannot hold its {hlen}-byte header")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    try:
        header = json.loads(body[_PREFIX.size:_PREFIX.size + hlen])
    except (UnicodeDecodeError, ValueError):
        header = None
    declared = header.get("payload_bytes") if isinstance(header, dict) else None
    if isinstance(declared, int):
        want = _PREFIX.size + hlen + declared + _DIGEST
        if len(data) < want:
            raise ArtifactError(f"{path}: truncated artifact: {len(data)} bytes, its header declares {want}")
        if len(data) > want:
            raise ArtifactError(f"{path}: {len(data) - want} unexpected bytes after the artifact's end")
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(f"{path}: checksum mismatch (file corrupt or truncated)")
    if not isinstance(header, dict) or not isinstance(declared, int):
        raise ArtifactError(f"{path}: header is not a valid artifact header")
    payloads = body[_PREFIX.size + hlen:]
    entries = header.get("tensors")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ArtifactError(f"{path}: header has no tensor list")
    names = [e.get("name") for e in entries]
    if len(set(map(str, names))) != len(names):
        raise ArtifactError(f"{path}: duplicate tensor names in the header")
    if expected is not None:
        missing = [n for n in expected if n not in names]
        unexpected = [n for n in names if n not in expected]
        if missing:
            raise ArtifactError(f"{path}: missing tensor(s): {', '.join(map(repr, missing))}")
        if unexpected:
            raise ArtifactError(f"{path}: unexpected tensor(s): {', '.join(map(repr, unexpected))}")
        for e in entries:
            if tuple(e.get("shape") or ()) != tuple(expected[e["name"]]):
                raise ArtifactError(f"{path}: tensor {e['name']!r} has shape {tuple(e.get('shape') or ())}, "
                                    f"expected {tuple(expected[e['name']])}")
    tensors = {}
    try:
        joint = _read_joints(header, entries, payloads) if version >= 2 else {}
        for e in entries:
            tensors[e.get("name")] = _read_tensor(e, payloads, joint)
    except ArtifactError as err:
        raise ArtifactError(f"{path}: {err}") from None
    config, meta = header.get("config"), header.get("meta")
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ArtifactError(f"{path}: header config and meta must be objects")
    return Artifact(config=config, meta=meta, tensors=tensors)
