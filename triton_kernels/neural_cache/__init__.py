"""Neural-cache lookup (continuous cache, Grave, Joulin & Usunier 2017) for score-first evaluation.

The math
--------
A cache holds ``N`` keys: final hidden states ``k_j`` (``[N, d]``) of positions already scored,
each with the label ``y_j`` (the token that followed it) and a scored sequence number ``key_seq[j]``.
A query is the final hidden state ``q`` of a position being predicted (``[Q, d]``), with its own
``query_seq[q]``. Then, for temperature ``theta > 0``:

    sim(q, k)   = q . k                                        (similarity="dot")
                = q . k / (max(|q|, eps) * max(|k|, eps))      (similarity="cosine", eps = 1e-12)
    s_qj        = theta * sim(q, k_j)
    K(q)        = { j : key_seq[j] < query_seq[q] }            the key set visible to q
    log_den(q)  = log sum_{j in K(q)} exp(s_qj)                (-inf when K(q) is empty)
    log p_cache(w | q) = log sum_{j in K(q), y_j = w} exp(s_qj) - log_den(q)
                                                               (-inf when no visible key has label w)

``p_cache`` is a normalised distribution over the vocabulary whenever ``K(q)`` is non-empty and is
undefined otherwise (``count = |K(q)| = 0``). Every function returns ``count`` so the caller can
tell. Without ``key_seq`` / ``query_seq`` every key is visible to every query.

The causal rule. ``key_seq[j] < query_seq[q]``, strictly. Two ways to number:

* per token: key ``j`` is the state at position ``i`` with label ``x_{i+1}``; give it
  ``key_seq = i + 1`` (the position of its label) and give the query at position ``t`` (predicting
  ``x_{t+1}``) ``query_seq = t + 1``. A key is then visible iff its label is an earlier token than
  the query's target: the cache of Grave et al., usable inside a chunk, since those labels are
  inputs of the query's own prefix;
* per chunk: the evaluation engine scores chunk ``c`` first and only then inserts its keys; give
  keys ``key_seq = c`` and the queries of chunk ``c'`` ``query_seq = c'``: a chunk sees exactly the
  chunks scored before it. (With that numbering and only earlier chunks in the cache, every key is
  visible and the sequence numbers can be left out.)

The mixture. With ``0 <= lam < 1`` (a float or one value per query, e.g. from the model's entropy):

    log p(w) = logaddexp(log(1 - lam) + log p_model(w), log(lam) + log p_cache(w))

a normalised distribution whenever ``p_model`` is; where ``count = 0`` the result is
``log p_model`` exactly (``p_cache`` undefined gets weight 0). ``lam = 1`` is refused: a token
missing from the cache would get probability 0.

The functions
-------------
* :func:`cache_target_logprob`: ``log p_cache(target_q | q)`` for one target per query ``[Q]``,
  in one streaming pass over the keys (Triton on CUDA / under ``TRITON_INTERPRET=1``, else torch).
* :func:`cache_log_probs`: ``log p_cache(. | q)`` over the whole vocabulary ``[Q, V]``. A torch
  implementation on the same scores (no kernel): chunked matmul, then per-token log-sum-exp via
  ``scatter_reduce(amax)`` + ``scatter_add``. For normalisation checks and entropy-dependent ``lam``.
* :func:`mix_log_probs`: the mixture above, for ``[Q]`` target log-probs or ``[Q, V]`` rows.

Precision: scores and both log-sum-exps are computed in float32 (float64 for float64 states);
fp16/bf16 states are multiplied on tensor cores with float32 accumulation. The numerator and the
denominator each keep their own running maximum, so ``log p_cache`` stays finite for any ``theta``
as long as one visible key carries the target (``theta * sim`` must itself be finite in float32).

The kernel (``kernels.py``; launcher ``ops.py``): a ``(query blocks, key splits)`` grid; each
program streams its range of keys in blocks, computes the ``[BQ, BN]`` scores (the dot product
reduced over slices of ``d``; for cosine the key norms are summed from the same loaded slices),
masks invisible keys and updates two online log-sum-exps and a visible-key count. The splits'
partials are combined with ``logsumexp`` in torch. Keys are read once per query block. No autograd.
"""
from __future__ import annotations

import torch

from .._dispatch import resolve_impl
from .checks import check_lookup, check_mix
from .ops import TRITON_DTYPES, cache_lookup_op, cache_tiles
from .reference import (DEFAULT_CHUNK, CacheLookup, cache_log_probs_reference, cache_lookup_reference,
                        mix_log_probs_reference, scores_reference)

__all__ = ["CacheLookup", "cache_target_logprob", "cache_log_probs", "mix_log_probs", "cache_lookup_reference",
           "cache_log_probs_reference", "mix_log_probs_reference", "scores_reference", "cache_tiles"]


def cache_target_logprob(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, *,
                         theta: float, vocab_size: int, similarity: str = "dot",
                         key_seq: torch.Tensor | None = None, query_seq: torch.Tensor | None = None,
                         validate: bool = True, impl: str = "auto") -> CacheLookup:
    """``log p_cache(target | query)`` for each query, streaming once over the keys (see the package docstring).

    Args:
        queries: ``[Q, d]`` final hidden states of the positions being scored (fp16, bf16, fp32;
            fp64 runs the torch path).
        keys: ``[N, d]`` cached hidden states, the same dtype as ``queries`` (copied if the last
            dimension is not contiguous).
        labels: ``[N]`` int, the token that followed each key, in ``[0, vocab_size)``.
        targets: ``[Q]`` int, the token each query is scored on, in ``[0, vocab_size)``.
        theta: temperature, a finite float ``> 0``.
        vocab_size: ``V``; bounds the labels and targets.
        similarity: ``"dot"`` or ``"cosine"``.
        key_seq, query_seq: ``[N]`` / ``[Q]`` int scored sequence numbers (both or neither), in the
            int32 range; key ``j`` is visible to query ``q`` iff ``key_seq[j] < query_seq[q]``.
        validate: also check the values (labels, targets and sequence numbers in range, queries and
            keys finite):
            one extra pass over the keys and a host synchronisation. An engine that checked its keys
            when inserting them may pass ``False``; ``torch.compile(fullgraph=True)`` needs ``False``
            (the Triton path is a custom op and traces).
        impl: ``"auto"`` (Triton on CUDA or under ``TRITON_INTERPRET=1``, else torch), ``"triton"``
            or ``"torch"``.

    Returns:
        :class:`CacheLookup` ``(log_p [Q], log_den [Q], count [Q] int32)``, float32 (float64
        for float64 states);
        ``log_p = -inf`` where no visible key has the target label (also when ``count == 0``); never NaN.
    """
    theta = check_lookup(queries, keys, labels, targets, theta=theta, vocab_size=vocab_size, similarity=similarity,
                         key_seq=key_seq, query_seq=query_seq, validate=validate)
    use = resolve_impl(impl, queries, keys)
    if use == "triton" and queries.dtype not in TRITON_DTYPES:
        if impl == "triton":
            raise ValueError(f"impl='triton' supports {[str(d) for d in TRITON_DTYPES]}, got {queries.dtype}")
        use = "torch"
    if use == "torch":
        return cache_lookup_reference(queries, keys, labels, targets, theta=theta, similarity=similarity,
                                      key_seq=key_seq, query_seq=query_seq)
    if keys.stride(1) != 1:
        keys = keys.contiguous()
    return cache_lookup_op(queries.contiguous(), keys, labels, targets, theta=theta, similarity=similarity,
                           key_seq=key_seq, query_seq=query_seq)


def cache_log_probs(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, *, theta: float,
                    vocab_size: int, similarity: str = "dot", key_seq: torch.Tensor | None = None,
                    query_seq: torch.Tensor | None = None, validate: bool = True,
                    chunk: int = DEFAULT_CHUNK) -> CacheLookup:
    """``log p_cache(w | query)`` for every token ``w`` of the vocabulary: ``[Q, V]``.

    Same arguments and math as :func:`cache_target_logprob` (no targets); a torch implementation
    (runs wherever the tensors are) processing ``chunk`` keys at a time, ``O(Q * (chunk + V))``
    memory. Each row sums to 1 where ``count > 0`` and is all ``-inf`` where ``count == 0``;
    gathering a row at a target gives :func:`cache_target_logprob`'s ``log_p``.
    """
    theta = check_lookup(queries, keys, labels, None, theta=theta, vocab_size=vocab_size, similarity=similarity,
                         key_seq=key_seq, query_seq=query_seq, validate=validate)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return cache_log_probs_reference(queries, keys, labels, vocab_size=vocab_size, theta=theta,
                                     similarity=similarity, key_seq=key_seq, query_seq=query_seq, chunk=chunk)


def mix_log_probs(log_p_model: torch.Tensor, log_p_cache: torch.Tensor, *, lam: float | torch.Tensor,
                  count: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """``log((1 - lam) p_model + lam p_cache)``, computed as a ``logaddexp`` (see the package docstring).

    Args:
        log_p_model: ``[Q]`` (at the targets) or ``[Q, V]`` (full rows) log-probabilities of the model.
        log_p_cache: the same shape, from :func:`cache_target_logprob` / :func:`cache_log_probs`.
        lam: the cache weight in ``[0, 1)``: a float, a 0-d tensor or a ``[Q]`` tensor (per query).
        count: ``[Q]`` visible keys per query (the lookup's ``count``); ``0`` gives ``log p_model`` exactly.
        validate: check a tensor ``lam``'s values (one host synchronisation).

    Returns:
        A tensor of ``log_p_model``'s shape and dtype; differentiable in both log-probabilities and ``lam``.
    """
    check_mix(log_p_model, log_p_cache, lam, count, validate=validate)
    return mix_log_probs_reference(log_p_model, log_p_cache, lam, count)
