"""Launcher of the neural-cache target lookup and its ``torch.library`` custom op.

``cache_lookup_triton`` checks what the kernel needs (device, dtypes, shapes, unit stride), picks
tiles and the number of key splits (:func:`cache_tiles`), launches ``_cache_lookup_fwd_kernel`` on a
``(query blocks, splits)`` grid and combines the per-split partials in log space with torch
(``logsumexp`` over the splits). No host synchronisation: grids depend only on shapes. No
autograd: this is an evaluation op (the reference is differentiable if a caller needs gradients).
"""
from __future__ import annotations

import torch

from .._dispatch import interpreter_enabled
from .checks import SIMILARITIES
from .reference import CacheLookup, query_scale

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)
MAX_SPLITS = 65535  # the grid's second dimension


def _kernel():
    """``_cache_lookup_fwd_kernel``, imported on first launch (never at package import)."""
    from .kernels import _cache_lookup_fwd_kernel
    return _cache_lookup_fwd_kernel


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def cache_tiles(n_queries: int, n_keys: int, dim: int, dtype: torch.dtype, *, sm_count: int) -> dict[str, int]:
    """Tiles, warps, stages and key splits of one lookup.

    ``BQ`` queries x ``BN`` keys per block, the dot product reduced over ``BD``-wide slices of the
    hidden dimension (``tl.dot`` needs edges >= 16); 16-bit states use 64-wide slices, float32 32.
    8 warps: with 4, the ``[64, 64]`` block with sequence numbers needs more than 255 registers on
    sm_90 and spills; ``BQ = 128`` spills in float32.
    ``splits``: the keys are cut into this many contiguous ranges (each a whole number of ``BN``
    blocks, at least 4 blocks long) so that ``query blocks x splits`` programs cover about two
    waves of ``sm_count`` multiprocessors; with few queries and many keys this is split-K.
    Untuned: the GPU tiles compile for sm_90 without spills (``tests/test_sm90_compile.py``);
    speed is unmeasured.
    """
    bq = min(64, max(16, _pow2_at_least(n_queries)))
    bn = 64
    bd = min(64 if dtype != torch.float32 else 32, max(16, _pow2_at_least(dim)))
    q_blocks = max(1, -(-n_queries // bq))
    key_blocks = -(-n_keys // bn)
    want = max(1, -(-2 * sm_count // q_blocks))
    splits = max(1, min(want, key_blocks // 4, MAX_SPLITS))
    blocks_per_split = -(-key_blocks // splits)
    splits = -(-key_blocks // blocks_per_split) if key_blocks else 1
    return dict(BQ=bq, BN=bn, BD=bd, num_warps=8, num_stages=3, splits=splits,
                keys_per_split=max(1, blocks_per_split) * bn)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def cache_lookup_triton(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, *,
                        theta: float, similarity: str = "dot", key_seq: torch.Tensor | None = None,
                        query_seq: torch.Tensor | None = None, splits: int | None = None) -> CacheLookup:
    """Launch the streaming lookup: ``log p_cache(targets)``, ``log den`` and visible-key counts.

    ``queries [Q, d]`` and ``keys [N, d]`` share a dtype (fp16, bf16, fp32) and have unit stride in
    their last dimension; ``labels [N]``, ``targets [Q]``, ``key_seq [N]``, ``query_seq [Q]`` are
    int32/int64 with values in the int32 range (the kernel compares them as int32, which keeps it
    free of register spills). ``splits`` overrides the number of key ranges chosen by
    :func:`cache_tiles`. Values are not checked here (ranges, finiteness): the public function does that.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if queries.dtype not in TRITON_DTYPES or keys.dtype != queries.dtype:
        raise ValueError(f"queries and keys must share one dtype of {[str(d) for d in TRITON_DTYPES]}, "
                         f"got {queries.dtype} and {keys.dtype}")
    for name, t in (("queries", queries), ("keys", keys)):
        if t.dim() != 2 or t.stride(1) != 1:
            raise ValueError(f"{name} must be 2-D with unit stride in the last dimension, got shape "
                             f"{tuple(t.shape)} strides {t.stride()}")
    for name, t in (("labels", labels), ("targets", targets), ("key_seq", key_seq), ("query_seq", query_seq)):
        if t is not None and t.dtype not in INDEX_DTYPES:
            raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if (key_seq is None) != (query_seq is None):
        raise ValueError("key_seq and query_seq go together: give both or neither")
    tensors = [t for t in (queries, keys, labels, targets, key_seq, query_seq) if t is not None]
    device = queries.device
    if any(t.device != device for t in tensors):
        raise ValueError(f"every tensor must be on one device, got {sorted({str(t.device) for t in tensors})}")
    if not (device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())):
        raise ValueError(f"cache_lookup_triton needs CUDA tensors (or CPU ones under TRITON_INTERPRET=1), got {device}")
    Q, D = queries.shape
    N = keys.shape[0]
    tiles = cache_tiles(Q, N, D, queries.dtype, sm_count=_sm_count(device))
    if splits is not None:
        blocks = max(1, -(-N // tiles["BN"]))
        per_split = -(-blocks // max(1, min(splits, blocks, MAX_SPLITS)))
        tiles.update(splits=-(-blocks // per_split), keys_per_split=per_split * tiles["BN"])
    S = tiles["splits"]
    den = torch.empty((S, Q), device=device, dtype=torch.float32)
    num = torch.empty((S, Q), device=device, dtype=torch.float32)
    cnt = torch.empty((S, Q), device=device, dtype=torch.int32)
    if Q > 0:
        scale = query_scale(queries, theta, similarity).float().contiguous()
        has_seq = key_seq is not None
        _kernel()[(-(-Q // tiles["BQ"]), S)](
            queries, keys, labels.contiguous(), targets.contiguous(),
            key_seq.contiguous() if has_seq else labels, query_seq.contiguous() if has_seq else targets, scale,
            den, num, cnt, Q, N, D, tiles["keys_per_split"], queries.stride(0), keys.stride(0),
            COSINE=similarity == "cosine", HAS_SEQ=has_seq,
            PRECISION="ieee" if queries.dtype == torch.float32 else None,
            BQ=tiles["BQ"], BN=tiles["BN"], BD=tiles["BD"],
            num_warps=tiles["num_warps"], num_stages=tiles["num_stages"])
    log_den = torch.logsumexp(den, dim=0)
    log_num = torch.logsumexp(num, dim=0)
    count = cnt.sum(dim=0, dtype=torch.int32)
    log_p = torch.where(count > 0, log_num - log_den, torch.full_like(log_num, float("-inf")))
    return CacheLookup(log_p, log_den, count)


@torch.library.custom_op("triton_kernels::neural_cache_lookup", mutates_args=())
def _cache_lookup_op(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                     key_seq: torch.Tensor | None, query_seq: torch.Tensor | None, theta: float,
                     similarity: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(cache_lookup_triton(queries, keys, labels, targets, theta=theta, similarity=similarity,
                                     key_seq=key_seq, query_seq=query_seq))


@_cache_lookup_op.register_fake
def _(queries, keys, labels, targets, key_seq, query_seq, theta, similarity):
    Q = queries.shape[0]
    f32 = queries.new_empty((Q,), dtype=torch.float32)
    return f32, torch.empty_like(f32), queries.new_empty((Q,), dtype=torch.int32)


def cache_lookup_op(queries, keys, labels, targets, *, theta, similarity, key_seq, query_seq) -> CacheLookup:
    """The Triton lookup through ``torch.ops.triton_kernels.neural_cache_lookup`` (traceable by
    ``torch.compile(fullgraph=True)``)."""
    return CacheLookup(*torch.ops.triton_kernels.neural_cache_lookup(queries, keys, labels, targets, key_seq,
                                                                     query_seq, float(theta), similarity))
