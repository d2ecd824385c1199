"""The model artifact: one checked file holding config, metadata and every tensor.

File layout (integers little-endian; version 5 pinned by ``tests/golden/artifact_v5.pgolf``,
version 4 by ``tests/golden/artifact_v4.pgolf``, version 3 by ``tests/golden/artifact_v3.pgolf``,
version 2 by ``tests/golden/artifact_v2.pgolf``; versions 1-4 are still read, 5 and 2 written)::

    offset         size  field
    0              8     magic b"PGOLFART"
    8              4     uint32 format version (5; files of earlier pgolf: 1-4)
    12             4     uint32 H, bytes of the header
    16             H     header: versions 3-5: one method byte (0 raw, 1 zstd-22 (written for
                         codec zstd only; earlier rans files have it too), 2 xz, 3 raw LZMA2
                         (version 5)) and the JSON index through it; versions 1-2: the JSON itself. JSON: UTF-8,
                         sorted keys, no whitespace
    16 + H         P     payloads, back to back (P = header["payload_bytes"])
    16 + H + P     32    SHA-256 of every byte before it

The index is ``{"config": {...}, "meta": {...}, "payload_bytes": P, "tensors": [entry, ...],
"joint": [payload, ...], "ctx": [payload, ...], "side": side}`` with entries in insertion order
(``joint`` is new in version 2, ``ctx`` and ``side`` in version 3). Every entry has ``name``,
``shape`` (the tensor's own shape), ``dtype`` (``"float32"``, ``"bfloat16"``, ...) and ``kind``:

* ``"raw"``: stored losslessly in its dtype (little-endian bytes, C order), one payload ``data``;
* ``"q"``: a :class:`~pgolf.quant.qtensor.QTensor`: ``bits``, ``rows``, ``cols`` and two payloads,
  ``codes`` (int8 codes, rows x cols) and ``scale`` (float16 little-endian, one per row).

A payload is ``{"codec": c, "offset": o, "length": n}``, ``o`` counted from the start of the
payload section. Codecs: ``"rans"`` (:func:`pgolf.codec.rans_encode`, codes only), ``"zstd"``
(level 22), ``"zlib"`` (level 9), ``"lzma"`` (version 3+, side stream only) and ``"raw"`` (the
bytes themselves; for codes one byte per value). With ``codec="zstd"``/``"zlib"`` codes are one
byte per value through that compressor; with ``codec="rans"`` codes use the entropy coders.

Joint payloads (version 2+, ``codec="rans"``): QTensors of one bit width whose ``cols`` are
multiples of :data:`pgolf.codec.MIN_PIECE` may share one :func:`pgolf.codec.rans_encode_set`
stream, ``header["joint"][j]`` (a ``"rans"`` payload). Their ``codes`` are then
``{"codec": "joint", "joint": j}``; the stream holds the codes of every entry referring to ``j``,
in header order, concatenated (:func:`pgolf.codec.rans_decode_set`).

Context-coded payloads (version 3+, ``codec="rans"``): ``header["ctx"][j]`` is a
:func:`pgolf.codec.ctx_encode` stream of the codes of every entry whose ``codes`` are
``{"codec": "ctx", "ctx": j}``, in header order, one matrix each. The writer groups QTensors by
bit width and role (the name without its layer numbers: ``blocks.3.mlp.fc.weight`` ->
``blocks.mlp.fc.weight``) and, per bit width, keeps the smaller of version 2's coding (one
rANS set of all of them) and, role by role, the smaller of a context-coded stream and a rANS set.
Version 5 writes version-3 context-coded streams, whose matrices may be coded with a column
prior: such an entry's ``codes`` also names ``"prior": m``, a ``"q"`` entry with ``m.rows`` equal
to this entry's ``cols``, and the prior is :func:`pgolf.codec.prior_classes` of ``m``'s stored
fp16 scales (:func:`prior_source` picks ``m``: in the same block, the matrix whose outputs are this
one's inputs, e.g. ``mlp.fc`` for ``mlp.proj``, whose columns' magnitudes follow the scales of the
``mlp.fc`` rows that feed them). Per stream the encoder keeps the priors only if they pay.
Versions 3 and 4 hold version-2 streams, without priors.

Side stream (version 3+): every scale and every ``"raw"`` tensor's bytes are one stream,
``header["side"] = {"codec": c, "offset": o, "length": n, "size": m, "shuffle": b}``: decoded
through ``c`` it has ``m`` bytes; an entry's ``scale`` or ``data`` is then ``{"codec": "side",
"offset": o, "length": n}`` into it. Versions 3-4: with ``shuffle`` each such region is stored
byte-plane by byte-plane (all first bytes of its items, then all second bytes, ...; item size =
its dtype's). Version 5: ``"groups": [[k, bytes], ...]``: the regions of item size ``k`` are
consecutive, groups in ascending ``k``; with ``shuffle`` each group is stored byte-plane by
byte-plane as a whole; offsets count in the unshuffled stream. Codec ``"lzma2"`` (version 5):
raw LZMA2 with a 4 MiB dictionary. The writer keeps the smallest of its compressors, shuffled
or not.

LQER factors (versions 4 and 5; :mod:`pgolf.quant.lqer`): QTensor entries ``<name>.lqer_a``
(``A^T``, int2 on the grid ``[-2, 1]``) and ``<name>.lqer_b`` (``B``, int4 on ``[-8, 7]``) whose
product a reader must add to the matrix ``<name>``. Version 4 was version 3's layout for files that
hold them, so that a reader predating them refuses such a file by its version instead of loading
a model without its corrections; such readers refuse version 5 too.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import re
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pgolf import codec as _codec
from pgolf.quant.qtensor import LQER_SUFFIXES, QTensor
from pgolf.util.atomic import atomic_write_bytes

MAGIC = b"PGOLFART"
VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
WRITABLE_VERSIONS = (2, 5)
CODECS = (*_codec.COMPRESSORS, "raw")
_HEADER_METHODS = ("raw", "zstd", "lzma", "lzma2")
_LZMA2_DICT = 1 << 22  # raw LZMA2 (version 5: the side stream and the index): no container, 4 MiB dictionary


def _lzma2_filters(**props: int) -> list[dict]:
    """Raw LZMA2 at preset 9e; the side stream's byte planes use ``lc=0, pb=0`` (their bytes say
    little about the next), the JSON index the defaults. A decoder needs only the dictionary size."""
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": _LZMA2_DICT, **props}]
_MAX_INDEX = 1 << 26  # bytes a compressed index may expand to
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
    elif codec == "lzma":
        packed = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    elif codec == "lzma2":
        packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma2_filters(lc=0, pb=0))
    else:
        return "raw", data
    return (codec, packed) if len(packed) < len(data) else ("raw", data)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _planes(data: bytes, itemsize: int, inverse: bool = False) -> bytes:
    """Byte-plane shuffle of ``itemsize``-byte items (or its inverse)."""
    if itemsize == 1 or not data:
        return data
    a = np.frombuffer(data, np.uint8)
    return (a.reshape(itemsize, -1).T if inverse else a.reshape(-1, itemsize).T).tobytes()


def role(name: str) -> str:
    """A tensor's role: its name without layer numbers (``blocks.3.mlp.fc.weight`` -> ``blocks.mlp.fc.weight``)."""
    return re.sub(r"\.\d+(?=\.|$)", "", name)


class _Payloads:
    """The payload section being written: ``add`` appends a blob and returns its reference."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def add(self, blob: bytes, codec: str) -> dict:
        self.chunks.append(blob)
        ref = {"codec": codec, "offset": self.offset, "length": len(blob)}
        self.offset += len(blob)
        return ref


def _rans_set_size(joint: bytes | None, own: list[bytes | None]) -> int:
    return (len(joint) if joint is not None else 0) + sum(len(s) for s in own if s is not None)


def prior_source(name: str, tensors: Mapping[str, QTensor]) -> str | None:
    """The matrix whose stored row scales give ``name``'s column prior: the first other QTensor of
    the same block (the name less its last two parts: ``blocks.3.mlp`` for
    ``blocks.3.mlp.proj.weight``) with as many rows as ``name`` has columns, or None. In a
    transformer block that is the matrix whose outputs ``name`` reads (``mlp.fc`` for ``mlp.proj``;
    ``attn.c_q`` for ``attn.proj``); the context coder keeps a stream's priors only if they pay."""
    parts = name.rsplit(".", 2)
    if len(parts) < 3:
        return None
    block, cols = parts[0] + ".", tensors[name].codes.shape[1]
    return next((m for m, t in tensors.items() if m != name and m.startswith(block) and t.codes.shape[0] == cols),
                None)


def _code_plan(tensors: Mapping[str, QTensor]) -> list[tuple[str, list[str], Any]]:
    """How version 5 codes the QTensors: ``(method, names, data)`` items, method ``"ctx"`` (data:
    ``(stream, prior sources)``), ``"rans"`` (data: ``(joint, own)`` of
    :func:`pgolf.codec.rans_encode_set`). Per bit width the smaller of one rANS set of all (version
    2's coding) and per role the smaller of a context-coded stream (offered the priors of
    :func:`prior_source`, which the encoder keeps if they pay) and a rANS set; every byte of each
    candidate counted."""
    widths: dict[int, list[str]] = {}
    for name, t in tensors.items():
        widths.setdefault(t.bits, []).append(name)
    plan = []
    for bits, names in widths.items():
        def rans_set(ns):
            return _codec.rans_encode_set([tensors[n].codes.detach().cpu() for n in ns], bits,
                                          scales=[tensors[n].scale for n in ns])
        whole = rans_set(names)
        by_role: dict[str, list[str]] = {}
        for n in names:
            by_role.setdefault(role(n), []).append(n)
        parts, size = [], 0
        for ns in by_role.values():
            found = [prior_source(n, tensors) for n in ns]
            priors = [None if m is None else _codec.prior_classes(tensors[m].scale) for m in found]
            ctx = _codec.ctx_encode([tensors[n].codes.detach().cpu() for n in ns], bits, priors=priors)
            sources = [m if f & 4 else None for m, f in zip(found, _codec.ctx_info(ctx)["flags"])]
            rs = rans_set(ns) if len(by_role) > 1 else whole
            if len(ctx) < _rans_set_size(*rs):
                parts.append(("ctx", ns, (ctx, sources)))
                size += len(ctx)
            else:
                parts.append(("rans", ns, rs))
                size += _rans_set_size(*rs)
        plan += parts if size < _rans_set_size(*whole) else [("rans", names, whole)]
    return plan


def _share(total: int, weights: list[int]) -> list[int]:
    """``total`` shared out in proportion to ``weights`` (the last one takes the rounding)."""
    out, given, w = [], 0, sum(weights) or 1
    for i, k in enumerate(weights):
        part = total - given if i == len(weights) - 1 else total * k // w
        out.append(part)
        given += part
    return out


def _layout_v2(tensors: Mapping[str, QTensor | torch.Tensor], codec: str, out: _Payloads) -> tuple[dict, dict[str, int]]:
    """Version 2's index fields and payloads: per-tensor scales and raw tensors, one rANS set per bit width."""
    side = "zstd" if codec == "rans" else codec  # how scales and raw tensors are compressed
    entries, sizes, codes_refs = [], {}, {}

    def payload(data: bytes, how: str) -> dict:
        name, blob = ("rans", data) if how == "rans" else _compress(data, how)
        return out.add(blob, name)

    if codec == "rans":
        widths: dict[int, list[str]] = {}
        for name, t in tensors.items():
            if isinstance(t, QTensor):
                widths.setdefault(t.bits, []).append(name)
        joints = []
        for bits, names in widths.items():
            joint, own = _codec.rans_encode_set([tensors[n].codes.detach().cpu() for n in names], bits,
                                                scales=[tensors[n].scale for n in names])
            codes_refs.update((n, s) for n, s in zip(names, own) if s is not None)
            members = [n for n, s in zip(names, own) if s is None]
            if joint is not None:
                for n, share in zip(members, _share(len(joint), [tensors[n].codes.numel() for n in members])):
                    codes_refs[n] = ({"codec": "joint", "joint": len(joints)}, share)
                joints.append(payload(joint, "rans"))
    for name, t in tensors.items():
        start = out.offset
        if isinstance(t, QTensor):
            rows, cols = t.codes.shape
            ref = codes_refs.get(name)
            if isinstance(ref, tuple):
                codes_ref, start = ref[0], start - ref[1]
            else:
                blob = ref if codec == "rans" else t.codes.detach().cpu().contiguous().numpy().tobytes()
                codes_ref = payload(blob, codec)
            entry = {"name": name, "kind": "q", "shape": list(t.shape), "dtype": _dtype_name(t.dtype),
                     "bits": t.bits, "rows": rows, "cols": cols,
                     "codes": codes_ref, "scale": payload(_tensor_bytes(t.scale), side)}
        else:
            entry = {"name": name, "kind": "raw", "shape": list(t.shape), "dtype": _dtype_name(t.dtype),
                     "data": payload(_tensor_bytes(t), side)}
        entries.append(entry)
        sizes[name] = out.offset - start
    return {"joint": joints if codec == "rans" else [], "tensors": entries}, sizes


def _side_stream(regions: list[tuple[bytes, int]], codec: str) -> tuple[dict, bytes]:
    """The side stream (version 5) of ``(bytes, itemsize)`` regions: ``(header fields, payload)``.
    The regions grouped by item size (ascending; insertion order within a group), each group
    stored as it is or byte-plane shuffled as a whole, through the smallest of the allowed
    compressors: the standard library's for ``rans`` (raw LZMA2, xz, zlib; so a ``rans`` artifact
    needs no ``zstandard``), else ``codec``'s own."""
    sizes = sorted({k for _, k in regions})
    groups = [b"".join(b for b, k in regions if k == g) for g in sizes]
    methods = ("lzma2", "lzma", "zlib") if codec == "rans" else (codec,)
    best = None
    for shuffle in (False, True):
        data = b"".join(_planes(b, g) if shuffle else b for b, g in zip(groups, sizes))
        for m in methods:
            name, blob = _compress(data, m)
            if best is None or len(blob) < len(best[1]):
                best = ({"codec": name, "size": len(data), "shuffle": shuffle,
                         "groups": [[g, len(b)] for g, b in zip(sizes, groups)]}, blob)
    return best


def _layout_v5(tensors: Mapping[str, QTensor | torch.Tensor], codec: str, out: _Payloads) -> tuple[dict, dict[str, int]]:
    """Version 5's index fields and payloads (see the module docstring); per-tensor byte shares."""
    qs = {n: t for n, t in tensors.items() if isinstance(t, QTensor)}
    codes_refs: dict[str, tuple[dict, int]] = {}  # name -> (codes reference, its share of payload bytes)
    joints, ctxs = [], []
    for method, names, data in (_code_plan(qs) if codec == "rans" else []):
        numels = [qs[n].codes.numel() for n in names]
        if method == "ctx":
            stream, sources = data
            for n, m, share in zip(names, sources, _share(len(stream), numels)):
                codes_refs[n] = ({"codec": "ctx", "ctx": len(ctxs), **({"prior": m} if m else {})}, share)
            ctxs.append(out.add(stream, "ctx"))
            continue
        joint, own = data
        members = [n for n, s in zip(names, own) if s is None]
        for n, s in zip(names, own):
            if s is not None:
                codes_refs[n] = (out.add(s, "rans"), len(s))
        if joint is not None:
            for n, share in zip(members, _share(len(joint), [qs[n].codes.numel() for n in members])):
                codes_refs[n] = ({"codec": "joint", "joint": len(joints)}, share)
            joints.append(out.add(joint, "rans"))
    for name, t in qs.items():
        if name not in codes_refs:
            c, blob = _compress(t.codes.detach().cpu().contiguous().numpy().tobytes(), codec)
            codes_refs[name] = (out.add(blob, c), len(blob))

    regions = [(_tensor_bytes(src), src.element_size())
               for src in (t.scale if isinstance(t, QTensor) else t for t in tensors.values())]
    group_start, at = {}, 0
    for k in sorted({k for _, k in regions}):  # the side stream holds the regions grouped by item size
        group_start[k], at = at, at + sum(len(b) for b, i in regions if i == k)
    entries = []
    for (name, t), (blob, k) in zip(tensors.items(), regions):
        ref = {"codec": "side", "offset": group_start[k], "length": len(blob)}
        group_start[k] += len(blob)
        if isinstance(t, QTensor):
            rows, cols = t.codes.shape
            entries.append({"name": name, "kind": "q", "shape": list(t.shape), "dtype": _dtype_name(t.dtype),
                            "bits": t.bits, "rows": rows, "cols": cols, "codes": codes_refs[name][0], "scale": ref})
        else:
            entries.append({"name": name, "kind": "raw", "shape": list(t.shape), "dtype": _dtype_name(t.dtype),
                            "data": ref})
    side, blob = _side_stream(regions, codec)
    side.update(out.add(blob, side["codec"]))
    side_shares = _share(len(blob), [len(b) for b, _ in regions])
    sizes = {n: codes_refs[n][1] if n in codes_refs else 0 for n in tensors}
    for n, share in zip(tensors, side_shares):
        sizes[n] += share
    return {"ctx": ctxs, "joint": joints, "side": side, "tensors": entries}, sizes


def _header_blob(header: bytes, codec: str) -> bytes:
    """The header field (version 3+): a method byte and the JSON index, raw or compressed, the smallest.
    zstd is a candidate only for ``codec="zstd"``, whose payloads need ``zstandard`` anyway: the
    other codecs' artifacts are written and read with the standard library (and, for ``rans``, pgolf's
    C++ codec, which a bundled submission builds from its own source), whatever is installed."""
    options = {0: header, 2: lzma.compress(header, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME),
               3: lzma.compress(header, format=lzma.FORMAT_RAW, filters=_lzma2_filters())}
    if codec == "zstd":
        import zstandard
        options[1] = zstandard.ZstdCompressor(level=22).compress(header)
    method = min(sorted(options), key=lambda i: len(options[i]))
    return bytes([method]) + options[method]


def save_artifact(path: str | os.PathLike, *, config: dict, tensors: Mapping[str, QTensor | torch.Tensor],
                  codec: str = "rans", meta: dict | None = None, version: int | None = None) -> ArtifactInfo:
    """Write ``tensors`` (QTensors and plain tensors) with ``config`` and ``meta`` to ``path``.

    ``codec`` picks how QTensor codes are stored (``"rans"``: the entropy coders, the smallest
    per group; ``"zstd"``, ``"zlib"`` or ``"raw"``: one byte per value through that compressor);
    plain tensors are stored losslessly in their own dtype. ``version`` picks the format: 5 (the
    default), or 2 for readers that predate version 3 (it cannot hold LQER factors). The file is
    written to a temporary name in the same folder, fsynced and renamed over ``path``, so readers
    never see half a file. ``config`` and ``meta`` must be JSON-serialisable.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    lqer = sorted(name for name in tensors if isinstance(name, str) and name.endswith(LQER_SUFFIXES))
    if version is None:
        version = VERSION
    if version not in WRITABLE_VERSIONS:
        raise ValueError(f"version must be one of {', '.join(map(str, WRITABLE_VERSIONS))}, got {version!r}")
    if lqer and version < 4:
        raise ValueError(f"version {version} cannot hold LQER factors ({', '.join(lqer[:4])}); write version {VERSION}")
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if isinstance(t, QTensor):
            rows, cols = t.codes.shape
            if rows * cols != math.prod(t.shape):
                raise ValueError(f"tensor {name!r}: codes {tuple(t.codes.shape)} do not hold shape {tuple(t.shape)}")
            _dtype_name(t.dtype)
        elif isinstance(t, torch.Tensor):
            _dtype_name(t.dtype)
        else:
            raise TypeError(f"tensor {name!r} must be a QTensor or torch.Tensor, got {type(t).__name__}")
    out = _Payloads()
    fields, sizes = (_layout_v5 if version >= 3 else _layout_v2)(tensors, codec, out)
    header_obj = {"config": config, "meta": meta or {}, "payload_bytes": out.offset, **fields}
    try:
        header = json.dumps(header_obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"config and meta must be JSON-serialisable: {e}") from None
    if version >= 3:
        header = _header_blob(header, codec)
    body = b"".join([_PREFIX.pack(MAGIC, version, len(header)), header, *out.chunks])
    data = body + hashlib.sha256(body).digest()

    path = Path(path)
    atomic_write_bytes(path, lambda f: f.write(data))
    size = os.path.getsize(path)
    if size != len(data):
        raise OSError(f"{path}: wrote {len(data)} bytes but the file has {size}")
    return ArtifactInfo(path=path, total_bytes=size, header_bytes=len(header), tensor_bytes=sizes)


def _decompress(blob: bytes, codec: str, what: str, limit: int | None = None) -> bytes:
    """``blob`` through ``codec``'s decompressor; with ``limit``, output beyond it is an error."""
    try:
        if codec == "zstd":
            import zstandard
            d = zstandard.ZstdDecompressor()
            return d.decompress(blob) if limit is None else d.stream_reader(io.BytesIO(blob)).read(limit + 1)
        if codec == "zlib":
            return zlib.decompress(blob) if limit is None else zlib.decompressobj().decompress(blob, limit + 1)
        if codec == "lzma":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob, -1 if limit is None else limit + 1)
        if codec == "lzma2":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW,
                                      filters=[{"id": lzma.FILTER_LZMA2, "dict_size": _LZMA2_DICT}])
            out = d.decompress(blob, -1 if limit is None else limit + 1)
            if not d.eof:
                raise ValueError("the LZMA2 stream ends early")
            return out
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


def _members(header: dict, entries: list[dict], key: str) -> tuple[list, list[list[dict]]]:
    """``header[key]`` (a list of shared payloads) and, per payload, the entries whose codes refer to it."""
    shared = header.get(key, [])
    if not isinstance(shared, list):
        raise ArtifactError(f"header field {key!r} is not a list")
    members: list[list[dict]] = [[] for _ in shared]
    for e in entries:
        ref = e.get("codes")
        if e.get("kind") == "q" and isinstance(ref, dict) and ref.get("codec") == key:
            j = ref.get(key)
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < len(shared):
                raise ArtifactError(f"tensor {e.get('name')!r}: codes refer to {key} payload {j!r} of {len(shared)}")
            members[j].append(e)
    return shared, members


def _read_joints(header: dict, entries: list[dict], payloads: bytes,
                 side: tuple[bytes, bool] | None) -> dict[str, torch.Tensor]:
    """Decode every joint and context-coded payload: name -> int8 codes of each tensor in one
    (the side stream holds the scales that context-coded column priors come from)."""
    out = {}
    joints, members = _members(header, entries, "joint")
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
    ctxs, members = _members(header, entries, "ctx")
    for j, (ref, group) in enumerate(zip(ctxs, members)):
        names = ", ".join(repr(e.get("name")) for e in group)
        what = f"context-coded payload {j} (tensors {names})"
        c, data = _payload(ref, payloads, what)
        if c != "ctx" or not group:
            raise ArtifactError(f"{what}: codec {c!r} with {len(group)} tensors is not a context-coded payload")
        shapes = [(_field(e, "rows", int, what), _field(e, "cols", int, what)) for e in group]
        priors = [_ctx_prior(e, entries, payloads, side, what) for e in group]
        try:
            held = [tuple(s) for s in _codec.ctx_info(data)["shapes"]]
            if held != shapes:
                raise ArtifactError(f"{what}: holds matrices {held}, its tensors need {shapes}")
            codes = _codec.ctx_decode(data, max_values=sum(r * c for r, c in shapes), priors=priors)
        except _codec.CodecError as err:
            raise ArtifactError(f"{what}: {err}") from None
        out.update((e.get("name"), torch.from_numpy(a)) for e, a in zip(group, codes))
    return out


def _read_side(header: dict, payloads: bytes, version: int) -> tuple[bytes, bool]:
    """The side stream, decompressed: ``(bytes, regions still shuffled)``; version 5's groups are
    unshuffled here, versions 3-4 shuffled each region on its own."""
    side = header.get("side")
    what = "side stream"
    if not isinstance(side, dict):
        raise ArtifactError(f"{what}: header field 'side' missing or not an object")
    c, data = _payload(side, payloads, what)
    size, shuffle = _field(side, "size", int, what), _field(side, "shuffle", bool, what)
    data = _decompress(data, c, what, limit=size)
    if len(data) != size:
        raise ArtifactError(f"{what}: {len(data)} bytes decompressed, header says {size}")
    if version < 5:
        return data, shuffle
    groups = _field(side, "groups", list, what)
    if not all(isinstance(g, list) and len(g) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in g)
               and g[0] >= 1 and g[1] >= 0 and g[1] % g[0] == 0 for g in groups) or sum(g[1] for g in groups) != size:
        raise ArtifactError(f"{what}: groups {groups!r} are not [item size, bytes] pairs covering its {size} bytes")
    if shuffle:
        out, at = [], 0
        for k, n in groups:
            out.append(_planes(data[at:at + n], k, inverse=True))
            at += n
        data = b"".join(out)
    return data, False


def _ctx_prior(entry: dict, entries: list[dict], payloads: bytes, side: tuple[bytes, bool] | None,
               what: str) -> np.ndarray | None:
    """The column prior a context-coded entry names (version 5), from the named entry's scales."""
    src = entry["codes"].get("prior")
    if src is None:
        return None
    source = next((e for e in entries if e.get("name") == src), None) if isinstance(src, str) else None
    if source is None or source.get("kind") != "q":
        raise ArtifactError(f"{what}: tensor {entry.get('name')!r} names the prior {src!r}, "
                            f"not a quantised tensor of this file")
    scale = _read_scale(source, payloads, side, f"{what}: prior {src!r}")
    cols = _field(entry, "cols", int, what)
    if scale.numel() != cols:
        raise ArtifactError(f"{what}: prior {src!r} has {scale.numel()} rows, tensor {entry.get('name')!r} "
                            f"has {cols} columns")
    return _codec.prior_classes(scale)


def _blob(entry: dict, key: str, what: str, payloads: bytes, side: tuple[bytes, bool] | None,
          itemsize: int = 1) -> tuple[str, bytes]:
    """An entry's payload ``key``: ``(codec, bytes)``, a side-stream region unshuffled."""
    ref = _field(entry, key, dict, what)
    if ref.get("codec") != "side":
        return _payload(ref, payloads, f"{what}: {key}")
    if side is None:
        raise ArtifactError(f"{what}: {key} refers to a side stream this version has not")
    data, shuffled = side
    _, region = _payload(dict(ref, codec="raw"), data, f"{what}: {key} in the side stream")
    if len(region) % itemsize:
        raise ArtifactError(f"{what}: {key} has {len(region)} bytes, not whole {itemsize}-byte items")
    return "raw", _planes(region, itemsize, inverse=True) if shuffled else region


def _fixed(data: bytes, dt: torch.dtype, numel: int, key: str, what: str) -> torch.Tensor:
    itemsize = torch.tensor([], dtype=dt).element_size()
    if len(data) != numel * itemsize:
        raise ArtifactError(f"{what}: {key} has {len(data)} bytes, {numel} x {dt} needs {numel * itemsize}")
    return torch.frombuffer(bytearray(data), dtype=dt) if numel else torch.zeros(0, dtype=dt)


def _read_scale(entry: dict, payloads: bytes, side: tuple[bytes, bool] | None, what: str) -> torch.Tensor:
    """A ``"q"`` entry's fp16 scales, one per row."""
    rows = _field(entry, "rows", int, what)
    c, data = _blob(entry, "scale", what, payloads, side, 2)
    return _fixed(_decompress(data, c, what), torch.float16, rows, "scale", what)


def _read_tensor(entry: dict, payloads: bytes, joint: dict[str, torch.Tensor],
                 side: tuple[bytes, bool] | None) -> QTensor | torch.Tensor:
    name = _field(entry, "name", str, "tensor entry")
    what = f"tensor {name!r}"
    shape = tuple(_field(entry, "shape", list, what))
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ArtifactError(f"{what}: bad shape {list(shape)}")
    dtype = _DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise ArtifactError(f"{what}: unsupported dtype {entry.get('dtype')!r}")

    kind = entry.get("kind")
    if kind == "raw":
        c, data = _blob(entry, "data", what, payloads, side, torch.tensor([], dtype=dtype).element_size())
        return _fixed(_decompress(data, c, what), dtype, math.prod(shape), "data", what).reshape(shape)
    if kind != "q":
        raise ArtifactError(f"{what}: unknown kind {kind!r}")
    bits, rows, cols = (_field(entry, k, int, what) for k in ("bits", "rows", "cols"))
    if rows * cols != math.prod(shape):
        raise ArtifactError(f"{what}: codes {rows} x {cols} do not hold shape {list(shape)}")
    c, data = ("joint", b"") if name in joint else _blob(entry, "codes", what, payloads, side)
    if c == "ctx":
        raise ArtifactError(f"{what}: codes refer to a context-coded payload that does not list it")
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
        codes = _fixed(_decompress(data, c, what), torch.int8, rows * cols, "codes", what).reshape(rows, cols)
    scale = _read_scale(entry, payloads, side, what)
    try:
        return QTensor(codes=codes, scale=scale, bits=bits, shape=shape, dtype=dtype)
    except ValueError as e:
        raise ArtifactError(f"{what}: {e}") from None


def _index_json(field: bytes, version: int) -> bytes:
    """The JSON index from the header field (version 3+: a method byte, then raw, zstd or lzma)."""
    if version < 3:
        return field
    if not field or field[0] >= len(_HEADER_METHODS):
        raise ArtifactError("unknown header method")
    return _decompress(field[1:], _HEADER_METHODS[field[0]], "header", limit=_MAX_INDEX)[:_MAX_INDEX]


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
        header = json.loads(_index_json(body[_PREFIX.size:_PREFIX.size + hlen], version))
    except (ArtifactError, UnicodeDecodeError, ValueError):
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
        side = _read_side(header, payloads, version) if version >= 3 else None
        joint = _read_joints(header, entries, payloads, side) if version >= 2 else {}
        for e in entries:
            tensors[e.get("name")] = _read_tensor(e, payloads, joint, side)
    except ArtifactError as err:
        raise ArtifactError(f"{path}: {err}") from None
    config, meta = header.get("config"), header.get("meta")
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ArtifactError(f"{path}: header config and meta must be objects")
    return Artifact(config=config, meta=meta, tensors=tensors)
