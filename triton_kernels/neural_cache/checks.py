"""Input checks shared by every path of the neural-cache ops: clear errors before any work."""
from __future__ import annotations

import math

import torch

SIMILARITIES = ("dot", "cosine")
INT32_RANGE = (-(2**31), 2**31)  # labels, targets and sequence numbers are compared as int32 in the kernel


def _int_vector(t, name: str, length: int, length_of: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be a 1-D int32 or int64 tensor, got shape {tuple(t.shape)} of {t.dtype}")
    if t.shape[0] != length:
        raise ValueError(f"{name} has {t.shape[0]} entries but {length_of} has {length}")


def check_theta(theta) -> float:
    """``theta`` as a float; ValueError unless it is a finite real number > 0."""
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ValueError(f"theta must be a finite number > 0, got {theta!r}")
    if not (math.isfinite(theta) and theta > 0):
        raise ValueError(f"theta must be a finite number > 0, got {theta!r}")
    return float(theta)


def check_lookup(queries, keys, labels, targets, *, theta, vocab_size: int, similarity: str,
                 key_seq, query_seq, validate: bool) -> float:
    """Check the arguments of a lookup; returns ``theta`` as a float.

    Shapes, dtypes, devices and scalars are always checked. With ``validate`` the values are too
    (labels and targets in ``[0, vocab_size)``, sequence numbers in the int32 range, queries and
    keys finite): one pass over them and one host synchronisation.
    """
    for name, t in (("queries", queries), ("keys", keys)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating tensor, got shape {tuple(t.shape)} of {t.dtype}")
    if queries.shape[1] != keys.shape[1] or queries.shape[1] == 0:
        raise ValueError(f"queries and keys need the same non-zero hidden size, got {queries.shape[1]} "
                         f"and {keys.shape[1]}")
    if keys.dtype != queries.dtype:
        raise ValueError(f"queries and keys must share a dtype, got {queries.dtype} and {keys.dtype}")
    _int_vector(labels, "labels", keys.shape[0], "keys")
    if targets is not None:
        _int_vector(targets, "targets", queries.shape[0], "queries")
    if (key_seq is None) != (query_seq is None):
        raise ValueError("key_seq and query_seq go together: give both or neither")
    if key_seq is not None:
        _int_vector(key_seq, "key_seq", keys.shape[0], "keys")
        _int_vector(query_seq, "query_seq", queries.shape[0], "queries")
    tensors = [t for t in (queries, keys, labels, targets, key_seq, query_seq) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"every tensor must be on one device, got {sorted({str(t.device) for t in tensors})}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    theta = check_theta(theta)
    if validate:
        bad = torch.stack([
            _out_of_range(labels, 0, vocab_size), _out_of_range(targets, 0, vocab_size, labels.device),
            _out_of_range(key_seq, *INT32_RANGE, labels.device), _out_of_range(query_seq, *INT32_RANGE, labels.device),
            ~torch.isfinite(queries).all(), ~torch.isfinite(keys).all()]).tolist()
        for flag, message in zip(bad, (f"labels must lie in [0, vocab_size={vocab_size})",
                                       f"targets must lie in [0, vocab_size={vocab_size})",
                                       "key_seq must lie in the int32 range", "query_seq must lie in the int32 range",
                                       "queries hold a non-finite value (inf or NaN)",
                                       "keys hold a non-finite value (inf or NaN)")):
            if flag:
                raise ValueError(message)
    return theta


def _out_of_range(t: torch.Tensor | None, low: int, high: int, device: torch.device | None = None) -> torch.Tensor:
    """0-d bool: does ``t`` hold a value outside ``[low, high)``?"""
    if t is None or t.numel() == 0:
        return torch.zeros((), dtype=torch.bool, device=device if t is None else t.device)
    return (t.min().long() < low) | (t.max().long() >= high)


def check_mix(log_p_model, log_p_cache, lam, count, *, validate: bool) -> None:
    """Check the arguments of :func:`mix_log_probs` (``lam`` values only with ``validate``)."""
    for name, t in (("log_p_model", log_p_model), ("log_p_cache", log_p_cache)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() not in (1, 2):
            raise ValueError(f"{name} must be a [Q] or [Q, V] floating tensor")
    if log_p_cache.shape != log_p_model.shape:
        raise ValueError(f"log_p_cache has shape {tuple(log_p_cache.shape)} but log_p_model has "
                         f"{tuple(log_p_model.shape)}")
    _int_vector(count, "count", log_p_model.shape[0], "log_p_model")
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point() or lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != log_p_model.shape[0]):
            raise ValueError(f"lam must be a float, a 0-d tensor or a [Q] floating tensor with "
                             f"Q={log_p_model.shape[0]}, got shape {tuple(lam.shape)} of {lam.dtype}")
        if validate and lam.numel() and not bool(((lam >= 0) & (lam < 1)).all()):
            raise ValueError("lam must lie in [0, 1) (lam = 1 would give tokens absent from the cache probability 0)")
    elif isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < 1:
        raise ValueError(f"lam must lie in [0, 1), got {lam!r}")
