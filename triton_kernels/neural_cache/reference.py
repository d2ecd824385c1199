"""Pure-torch neural-cache lookup: the test oracle and the CPU fallback (no Triton import).

The math is stated once, in :mod:`triton_kernels.neural_cache` (the package docstring). Scores are
computed in float32 (float64 when the hidden states are float64), over key chunks of at most
``chunk`` keys so memory stays ``O(Q * chunk)`` for caches of millions of keys; chunks are combined
in log space, which is exact up to rounding.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

COSINE_EPS = 1e-12  # norms are clamped to at least this (as torch.nn.functional.normalize does)
DEFAULT_CHUNK = 1 << 14


class CacheLookup(NamedTuple):
    """What a cache lookup returns.

    ``log_p``: ``log p_cache`` of the targets ``[Q]`` (target path) or of every token ``[Q, V]``
    (full-vocabulary path), float32 (float64 for float64 states), ``-inf`` where no visible key
    carries that token. ``log_den``: ``[Q]``, the same dtype, ``log sum_{j visible} exp(theta * sim(q, k_j))``; ``-inf`` when
    the query sees no key. ``count``: ``[Q]`` int32, the number of keys the query sees (0: empty
    cache, ``p_cache`` undefined, the mixture uses ``p_model`` alone).
    """

    log_p: torch.Tensor
    log_den: torch.Tensor
    count: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores are computed in: float64 for float64 states, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def query_scale(queries: torch.Tensor, theta: float, similarity: str) -> torch.Tensor:
    """``[Q]`` factor applied to ``q . k``: ``theta`` (dot) or ``theta / max(|q|, eps)`` (cosine)."""
    q = queries.to(compute_dtype(queries.dtype))
    scale = torch.full((q.shape[0],), float(theta), dtype=q.dtype, device=q.device)
    if similarity == "cosine":
        scale = scale / torch.linalg.vector_norm(q, dim=1).clamp_min(COSINE_EPS)
    return scale


def scores_reference(queries: torch.Tensor, keys: torch.Tensor, *, theta: float, similarity: str = "dot",
                     key_seq: torch.Tensor | None = None, query_seq: torch.Tensor | None = None) -> torch.Tensor:
    """``[Q, N]`` scores ``theta * sim(q, k)`` with ``-inf`` where key ``j`` is not visible to query ``q``."""
    acc = compute_dtype(queries.dtype)
    q, k = queries.to(acc), keys.to(acc)
    s = (q @ k.T) * query_scale(queries, theta, similarity)[:, None]
    if similarity == "cosine":
        s = s / torch.linalg.vector_norm(k, dim=1).clamp_min(COSINE_EPS)[None, :]
    if key_seq is not None:
        s = s.masked_fill(key_seq[None, :] >= query_seq[:, None], float("-inf"))
    return s


def _chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield slice(start, min(n, start + chunk))


def _visible_count(key_seq: torch.Tensor | None, query_seq: torch.Tensor | None, part: slice) -> torch.Tensor | int:
    if key_seq is None:
        return part.stop - part.start
    return (key_seq[None, :] < query_seq[:, None]).sum(dim=1)


def _finish(log_num: torch.Tensor, log_den: torch.Tensor, count: torch.Tensor) -> CacheLookup:
    """``log_num - log_den`` with ``-inf`` (never NaN) for queries that see no key."""
    den = log_den if log_num.dim() == 1 else log_den[:, None]
    seen = count > 0 if log_num.dim() == 1 else (count > 0)[:, None]
    log_p = torch.where(seen, log_num - den, torch.full_like(log_num, float("-inf")))
    return CacheLookup(log_p, log_den, count.to(torch.int32))


def cache_lookup_reference(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                           *, theta: float, similarity: str = "dot", key_seq: torch.Tensor | None = None,
                           query_seq: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> CacheLookup:
    """Target path: ``log p_cache(targets)`` as two masked logsumexps over the keys (no input checks)."""
    acc = compute_dtype(queries.dtype)
    neg = torch.full((queries.shape[0],), float("-inf"), dtype=acc, device=queries.device)
    log_den, log_num = neg, neg.clone()
    count = torch.zeros(queries.shape[0], dtype=torch.int64, device=queries.device)
    for part in _chunks(keys.shape[0], chunk):
        ks, qs = (key_seq[part], query_seq) if key_seq is not None else (None, None)
        s = scores_reference(queries, keys[part], theta=theta, similarity=similarity, key_seq=ks, query_seq=qs)
        match = labels[part][None, :] == targets[:, None]
        log_den = torch.logaddexp(log_den, torch.logsumexp(s, dim=1))
        log_num = torch.logaddexp(log_num, torch.logsumexp(s.masked_fill(~match, float("-inf")), dim=1))
        count += _visible_count(ks, qs, part)
    return _finish(log_num, log_den, count)


def cache_log_probs_reference(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, *, vocab_size: int,
                              theta: float, similarity: str = "dot", key_seq: torch.Tensor | None = None,
                              query_seq: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> CacheLookup:
    """Full-vocabulary path: ``log p_cache(v)`` for every ``v`` ``[Q, V]``, in log space (no input checks).

    Per key chunk, the scores of the keys carrying token ``v`` are reduced with their own maximum
    (``scatter_reduce(amax)``, then ``scatter_add`` of ``exp(s - max)``), so a token whose keys all
    score far below the best key still gets a finite log-probability, exactly like the target path.
    """
    acc = compute_dtype(queries.dtype)
    Q = queries.shape[0]
    log_num = torch.full((Q, vocab_size), float("-inf"), dtype=acc, device=queries.device)
    log_den = torch.full((Q,), float("-inf"), dtype=acc, device=queries.device)
    count = torch.zeros(Q, dtype=torch.int64, device=queries.device)
    for part in _chunks(keys.shape[0], chunk):
        ks, qs = (key_seq[part], query_seq) if key_seq is not None else (None, None)
        s = scores_reference(queries, keys[part], theta=theta, similarity=similarity, key_seq=ks, query_seq=qs)
        idx = labels[part].long()[None, :].expand_as(s)
        m = torch.full_like(log_num, float("-inf")).scatter_reduce(1, idx, s, "amax", include_self=True)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # bins with no visible key: any finite shift
        total = torch.zeros_like(log_num).scatter_add(1, idx, torch.exp(s - m.gather(1, idx)))
        log_num = torch.logaddexp(log_num, m + torch.log(total))
        log_den = torch.logaddexp(log_den, torch.logsumexp(s, dim=1))
        count += _visible_count(ks, qs, part)
    return _finish(log_num, log_den, count)


def mix_log_probs_reference(log_p_model: torch.Tensor, log_p_cache: torch.Tensor, lam: torch.Tensor | float,
                            count: torch.Tensor) -> torch.Tensor:
    """``logaddexp(log(1 - lam) + log p_model, log(lam) + log p_cache)``; ``log p_model`` where ``count == 0``."""
    lam = torch.as_tensor(lam, dtype=log_p_model.dtype, device=log_p_model.device)
    seen = count > 0
    if log_p_model.dim() == 2:
        lam = lam[:, None] if lam.dim() == 1 else lam
        seen = seen[:, None]
    mixed = torch.logaddexp(torch.log1p(-lam) + log_p_model, torch.log(lam) + log_p_cache.to(log_p_model.dtype))
    return torch.where(seen, mixed, log_p_model)
