"""Bit packing and rANS entropy coding of quantised int8 codes (the ``pgolf._codec`` extension).

Public API (numpy int8 arrays or CPU int8 torch tensors in; bytes or numpy int8 arrays out;
wrap outputs with ``torch.from_numpy`` when a tensor is wanted):

* :func:`pack_bits` / :func:`unpack_bits`: dense little-endian b-bit packing, b = 2..8;
  value ``v`` is stored as ``v + 2**(b-1)``, value ``i`` at bits ``[i*b, (i+1)*b)`` LSB first
  (full byte layout with a worked example in ``csrc/bitpack.h``).
* :func:`rans_encode` / :func:`rans_decode`: a rANS coder with per-row-group statistics that
  chooses the smallest of several row groupings; the stream records shape, bits and grouping
  (layout in ``csrc/rans.h``).
* :func:`rans_encode_set` / :func:`rans_decode_set`: several tensors of one bit width as one
  joint stream (shared tables, one group per tensor or per cluster of tensors) or one stream
  each, whichever is smaller (the artifact's coding of QTensor codes).
* :func:`ctx_encode` / :func:`ctx_decode`: several 2-D tensors of one bit width as one
  context-modelled stream (adaptive binary arithmetic coding; contexts from the same column in
  the previous rows, a row order chosen by similarity, column activity and an optional column
  prior, :func:`prior_classes`; layout and model in ``csrc/ctxcoder.h``).

Streams carry no checksum: a decoder rejects malformed input but a corrupted stream can decode to
wrong values without error (the artifact file's checksum is what catches damage on disk).
Malformed input to a decoder raises :class:`CodecError` (a ``ValueError``); out-of-range codes
raise ``ValueError`` naming the first offending index and value. The extension is imported
lazily: without it ``pgolf`` still imports and every codec call raises
:class:`CodecUnavailable` saying how to build it.
"""
from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["COMPRESSORS", "CodecError", "CodecUnavailable", "available", "packed_size", "pack_bits", "unpack_bits",
           "rans_encode", "rans_decode", "rans_info", "rans_encode_set", "rans_decode_set",
           "ctx_encode", "ctx_decode", "ctx_info", "prior_classes", "PRIOR_CLASSES"]

# The payload compressors an artifact can be written with (``quant.codec``).
COMPRESSORS = ("zlib", "zstd", "rans")
# Largest tensor a rANS stream may declare unless the caller says otherwise (2**32 values).
DEFAULT_MAX_VALUES = 1 << 32
# Tensors share a joint stream (rans_encode_set) only when their cols are multiples of this:
# shorter joint rows make the row statistics (rows x 2**bits counters) too large.
MIN_PIECE = 64


class CodecError(ValueError):
    """A packed or rANS-coded input is malformed (truncated, corrupt, inconsistent)."""


class CodecUnavailable(RuntimeError):
    """The C++ extension ``pgolf._codec`` is not built."""


def _ext() -> ModuleType:
    try:
        return importlib.import_module("pgolf._codec")
    except ImportError as e:
        raise CodecUnavailable(
            "the pgolf C++ codec extension (pgolf._codec) is not built; build it with "
            "`pip install -e .` or `python setup.py build_ext --inplace` in the repository root "
            f"(import failed: {e})") from e


def available() -> bool:
    """Whether the C++ extension can be imported."""
    try:
        _ext()
    except CodecUnavailable:
        return False
    return True


def _int8_array(codes: Any, name: str = "codes") -> np.ndarray:
    """A C-contiguous int8 numpy view of ``codes`` (copy only when it is not contiguous)."""
    if type(codes).__module__.startswith("torch"):
        if codes.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor, got device {codes.device}")
        codes = codes.detach().contiguous().numpy()
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(codes).__name__}")
    if codes.dtype != np.int8:
        raise TypeError(f"{name} must have dtype int8, got {codes.dtype}")
    return np.ascontiguousarray(codes)


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
    return int(bits)


def _decoding(fn, *args):
    ext = _ext()
    try:
        return fn(ext)(*args)
    except ext.StreamError as e:
        raise CodecError(str(e)) from None


def packed_size(count: int, bits: int) -> int:
    """Bytes of ``count`` values packed at ``bits`` bits: ``ceil(count * bits / 8)``."""
    return _ext().packed_size(int(count), _check_bits(bits))


def pack_bits(codes: Any, bits: int) -> bytes:
    """Pack int8 ``codes`` (any shape, read in C order) into ``ceil(n * bits / 8)`` bytes.

    Every value must lie in ``[-2**(bits-1), 2**(bits-1) - 1]``; otherwise ``ValueError`` names
    the first offending index and value.
    """
    return _ext().pack_bits(_int8_array(codes), _check_bits(bits))


def unpack_bits(data: bytes | bytearray | memoryview, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: a 1-D int8 array of ``count`` values.

    Raises :class:`CodecError` unless ``len(data) == packed_size(count, bits)`` and the padding
    bits of the last byte are zero.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return _decoding(lambda e: e.unpack_bits, data, _check_bits(bits), int(count))


def rans_encode(codes: Any, bits: int, *, scales: Any = None, segments: Any = None) -> bytes:
    """Entropy-code a 1-D or 2-D int8 tensor of ``bits``-bit codes into a self-describing stream.

    Symbol statistics are kept per group of rows; the encoder tries one group, contiguous row
    groups, and rows grouped by their code spread (and by ``scales``, one value per row, when
    given), refined by a few Lloyd iterations, and keeps the smallest, frequency tables and
    row map included. ``scales`` only guides that search; the decoder does not need it.
    ``segments`` (positive row counts summing to the rows, e.g. one per tensor of a joint set)
    adds groupings that give every segment one group (each its own, or clustered).
    """
    arr = _int8_array(codes)
    bits = _check_bits(bits)
    if arr.ndim == 1:
        rows, cols, two_d = 1, arr.shape[0], False
    elif arr.ndim == 2:
        (rows, cols), two_d = arr.shape, True
    else:
        raise ValueError(f"codes must be 1-D or 2-D, got shape {arr.shape}")
    key = None
    if scales is not None:
        key = _float_key(scales)
        if key.shape[0] != rows:
            raise ValueError(f"scales must have one value per row ({rows}), got {key.shape[0]}")
    segs = [] if segments is None else [int(n) for n in segments]
    return _ext().rans_encode(arr, rows, cols, two_d, bits, key, segs)


def rans_encode_set(tensors: list[Any], bits: int, *,
                    scales: list[Any] | None = None) -> tuple[bytes | None, list[bytes | None]]:
    """Code 2-D int8 tensors of one bit width: ``(joint, own)`` where ``joint`` is one stream
    of several of them (or ``None``) and ``own[i]`` is tensor ``i``'s :func:`rans_encode` stream,
    or ``None`` when tensor ``i`` is in the joint stream.

    The tensors that may share a stream are the non-empty ones whose ``cols`` are multiples of
    :data:`MIN_PIECE`; when there are two or more, they are coded jointly if that is smaller than
    a stream each. The joint stream is a 2-D stream of ``piece`` (the gcd of their ``cols``)
    values per row: their codes in C order, concatenated, cut into rows of ``piece`` values (no
    row spans two tensors), one segment per tensor; :func:`rans_decode_set` splits it again.
    Sharing frequency tables and stream headers pays for many small tensors. ``scales`` (one
    per-row scale vector per tensor) guide the grouping search.
    """
    arrs = [_int8_array(t, "tensors") for t in tensors]
    if any(a.ndim != 2 for a in arrs):
        raise ValueError("rans_encode_set takes 2-D tensors")
    scales = [None] * len(arrs) if scales is None else list(scales)
    own: list[bytes | None] = [rans_encode(a, bits, scales=s) for a, s in zip(arrs, scales)]
    members = [i for i, a in enumerate(arrs) if a.size and a.shape[1] % MIN_PIECE == 0]
    if len(members) < 2:
        return None, own
    piece = math.gcd(*(arrs[i].shape[1] for i in members))
    flat = np.concatenate([arrs[i].reshape(-1) for i in members]).reshape(-1, piece)
    key = None
    if all(scales[i] is not None for i in members):
        key = np.concatenate([np.repeat(_float_key(scales[i]), arrs[i].shape[1] // piece) for i in members])
    joint = rans_encode(flat, bits, scales=key, segments=[arrs[i].size // piece for i in members])
    if len(joint) >= sum(len(own[i]) for i in members):
        return None, own
    for i in members:
        own[i] = None
    return joint, own


def rans_decode_set(data: bytes | bytearray | memoryview, sizes: list[int]) -> list[np.ndarray]:
    """Decode a joint stream of :func:`rans_encode_set` into 1-D int8 arrays of ``sizes`` values
    (each tensor's codes in C order). ``sizes`` must be integers >= 0 (else ``ValueError``);
    raises :class:`CodecError` unless the stream holds exactly ``sum(sizes)`` values."""
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in sizes):
        raise ValueError(f"sizes must be integers >= 0, got {list(sizes)!r}")
    total = sum(sizes)
    flat = rans_decode(data, max_values=total).reshape(-1)
    if flat.size != total:
        raise CodecError(f"joint rANS stream holds {flat.size} values, its tensors need {total}")
    return np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []


def _float_key(scales: Any) -> np.ndarray:
    if type(scales).__module__.startswith("torch"):
        scales = scales.detach().cpu().float().numpy()
    return np.ascontiguousarray(np.asarray(scales, dtype=np.float32).reshape(-1))


def rans_decode(data: bytes | bytearray | memoryview, *, max_values: int | None = None) -> np.ndarray:
    """Decode a :func:`rans_encode` stream into an int8 array of the recorded shape.

    ``max_values`` bounds the number of values the stream may declare before any allocation
    (default ``2**32``); a stream declaring more raises :class:`CodecError`, as does any
    truncated, corrupt or trailing-garbage input.
    """
    limit = DEFAULT_MAX_VALUES if max_values is None else int(max_values)
    return _decoding(lambda e: e.rans_decode, data, limit)


def rans_info(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The header of a :func:`rans_encode` stream, validated, without decoding the payload.

    Keys: ``shape``, ``bits``, ``grouping`` (``"one"``, ``"contiguous"``, ``"mapped"`` or ``"segments"``),
    ``groups`` (number of frequency tables) and ``row_groups`` (uint16 group id per row).
    """
    info = _decoding(lambda e: e.rans_info, data)
    info["grouping"] = ("one", "contiguous", "mapped", "segments")[info["grouping"]]
    return info


PRIOR_CLASSES = 16  # a column prior's classes, 0..15 (csrc/ctxcoder.h)


def prior_classes(values: Any, classes: int = PRIOR_CLASSES) -> np.ndarray:
    """Rank classes of a 1-D float vector, for a column prior: ``floor(rank * classes / n)`` as
    uint8, ranks by a stable sort of the values as float32 (ties in order of position), so the
    writer and the reader of an artifact get the same classes from the same stored fp16 scales."""
    x = np.asarray(values.detach().cpu().float().numpy() if hasattr(values, "detach") else values, np.float32)
    if x.ndim != 1:
        raise ValueError(f"prior_classes takes a 1-D vector, got shape {x.shape}")
    ranks = np.empty(len(x), np.int64)
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return (ranks * classes // max(len(x), 1)).astype(np.uint8)


def _priors(priors: list[Any] | None, count: int) -> list:
    if priors is None:
        return []
    if len(priors) != count:
        raise ValueError(f"priors needs one entry (None or classes) per tensor, got {len(priors)} for {count}")
    out = []
    for k, p in enumerate(priors):
        if p is None:
            out.append(None)
            continue
        a = np.ascontiguousarray(np.asarray(p))
        if a.ndim != 1 or a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() >= PRIOR_CLASSES)):
            raise ValueError(f"prior {k} must be a 1-D integer vector of classes 0..{PRIOR_CLASSES - 1}")
        out.append(a.astype(np.uint8))
    return out


def ctx_encode(tensors: list[Any], bits: int, *, force_flags: int | None = None,
               priors: list[Any] | None = None) -> bytes:
    """Code 2-D int8 tensors of ``bits``-bit codes as one context-modelled stream.

    Each value is binarised (zero?, sign, unary magnitude) and every binary decision is coded with
    a probability that mixes (logistic mixing, learned online) adaptive models whose contexts are
    the values at the same column in the two previous coded rows, the column's running mean,
    mean magnitude and how far the row so far copies the row above; the models carry over from
    tensor to tensor, so tensors of one role across layers learn from each other.

    ``priors`` (optional, one entry per tensor): ``None`` or a class 0..15 per column (e.g.
    :func:`prior_classes` of the row scales of the matrix that feeds those columns); a tensor
    coded with its prior has its first model keyed by the class, and decoding needs the same
    classes again. The encoder picks per tensor plain, transposed, rows reordered by greedy L1
    nearest neighbour (the order is coded in the stream) or both, each variant costed alone; then
    keeps the smallest whole stream of that choice, the same without the priors, every tensor
    plain, and the variant most tensors chose for all. ``force_flags`` (0..3: bit 0 transposed,
    bit 1 reordered) forces one variant on every tensor and the priors wherever given. Values
    outside the ``bits`` range raise ``ValueError`` naming the tensor, index and value.
    """
    bits = _check_bits(bits)
    arrs = [_int8_array(t, "tensors") for t in tensors]
    if any(a.ndim != 2 for a in arrs):
        raise ValueError("ctx_encode takes 2-D tensors")
    if force_flags is not None and (isinstance(force_flags, bool) or force_flags not in (0, 1, 2, 3)):
        raise ValueError(f"force_flags must be None or 0..3, got {force_flags!r}")
    return _ext().ctx_encode(arrs, [a.shape for a in arrs], bits, -1 if force_flags is None else int(force_flags),
                             _priors(priors, len(arrs)))


def ctx_decode(data: bytes | bytearray | memoryview, *, max_values: int | None = None,
               priors: list[Any] | None = None) -> list[np.ndarray]:
    """Decode a :func:`ctx_encode` stream into its 2-D int8 arrays.

    ``priors``: the encoder's, one entry per tensor (read only for the tensors the stream says
    were coded with one; such a tensor without one raises :class:`CodecError`). ``max_values``
    bounds the total values the stream may declare before any allocation (default ``2**32``); a
    stream declaring more raises :class:`CodecError`, as does any truncated, corrupt or
    trailing-garbage input.
    """
    limit = DEFAULT_MAX_VALUES if max_values is None else int(max_values)
    count = len(ctx_info(data)["shapes"]) if priors is not None else 0
    return _decoding(lambda e: e.ctx_decode, data, limit, _priors(priors, count))


def ctx_info(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The header of a :func:`ctx_encode` stream, validated, without decoding the payload:
    ``version`` (3; 2 for streams of earlier pgolf, still decoded), ``bits``, ``shapes`` (one
    ``(rows, cols)`` per tensor) and ``flags`` (per tensor: bit 0 transposed, bit 1 rows
    reordered, bit 2 coded with a column prior)."""
    return _decoding(lambda e: e.ctx_info, data)
