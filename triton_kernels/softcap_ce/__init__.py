"""Fused softcapped cross-entropy: ``cross_entropy(c * tanh(logits / c), targets)`` without the capped logits.

Math (per row ``n`` of ``logits l [N, V]``, target ``y``, softcap ``c > 0``; all in float32)
--------------------------------------------------------------------------------------------
    z_j   = c tanh(l_j / c)                                 (z_j = l_j without a softcap)
    lse   = log sum_j exp(z_j)
    loss  = lse - z_y                                       (0 where y == ignore_index)
    p_j   = softmax(z)_j = exp(z_j - lse)

    d loss / d l_j = (p_j - 1[j = y]) (1 - tanh(l_j / c)^2)
    d lse  / d l_j =  p_j             (1 - tanh(l_j / c)^2)

so with upstream gradients ``g`` (of loss; 0 for an ignored row) and ``h`` (of lse),
``dl_j = ((g + h) p_j - g 1[j = y]) (1 - tanh(l_j / c)^2)``.

How the kernels evaluate it (``kernels.py``): with ``u = 2 l / c`` and ``e = exp(-|u|)``,
``z - c = -2c sigmoid(-u)`` (``sigmoid(-u) = e / (1 + e)`` for ``u >= 0``, ``1 / (1 + e)`` otherwise)
and ``1 - tanh^2 = 4 sigmoid(u) sigmoid(-u) = 4e / (1 + e)^2``: one exponential, no overflow for any
finite logit (``l = +-1e4`` saturates to ``z = +-c`` with a zero derivative), no cancellation near
saturation. Since ``z - c`` lies in ``[-2c, 0]``, for ``c <= 40`` the forward sums ``exp(z - c)``
directly (``exp(-80)`` is a normal float32, so no term underflows): ``lse = c + log sum exp(z - c)``
with no running max. A larger softcap, or none, uses the streaming form: per block of columns
``m' = max(m, max_j z_j)``, ``s <- s exp(m - m') + sum_j exp(z_j - m')``, ``lse = m + log s``.

The forward reads the logits once (one program per row, streaming over column blocks) and
writes ``loss`` and ``lse`` (float32, 8 bytes per row). The backward reads the saved raw logits
again, recomputes ``z`` and ``p`` from ``lse`` and writes ``dl`` in the logits' dtype: the softcapped
logits and the softmax are never stored.

``F.cross_entropy(c * torch.tanh(logits.float() / c), targets, reduction="none")`` is the same
function; :func:`softcap_ce_reference` is that, in pure torch (the oracle and the CPU path).
"""
from __future__ import annotations

import torch

from .._dispatch import resolve_impl
from .ops import ce_tiles, softcap_ce_bwd_triton, softcap_ce_fwd_triton, softcap_ce_op
from .reference import check_inputs, check_target_range, softcap_ce_reference, softcap_value

REDUCTIONS = ("none", "mean", "sum")

__all__ = ["REDUCTIONS", "ce_tiles", "softcap_ce_bwd_triton", "softcap_ce_fwd_triton", "softcap_ce_reference",
           "softcap_cross_entropy"]


def softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, softcap: float | None = 30.0,
                          reduction: str = "mean", ignore_index: int = -100, impl: str = "auto",
                          check_targets: bool = True,
                          return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of softcapped logits, ``F.cross_entropy(c * tanh(logits.float() / c), targets)``.

    The softcap is applied in float32 inside the op; the capped logits are never materialised
    (see the module docstring for the math and the kernels).

    Args:
        logits: ``[..., V]`` float32, float16 or bfloat16 raw (uncapped) logits; the leading dims
            are flattened into rows.
        targets: ``[...]`` int64 class indices in ``[0, V)``, or ``ignore_index``.
        softcap: ``c`` in ``c * tanh(l / c)``, a finite number ``> 0``; ``None`` or ``0`` for none.
        reduction: ``"mean"`` (over the tokens whose target is not ``ignore_index``; NaN when
            every token is ignored, as ``F.cross_entropy``), ``"sum"`` or ``"none"`` (per token,
            shape ``targets.shape``, 0 at ignored tokens).
        ignore_index: targets equal to it contribute no loss and no gradient through the loss.
        impl: ``"auto"`` | ``"triton"`` | ``"torch"`` (``triton_kernels._dispatch``); a model passes
            the ``impl`` of its config.
        check_targets: raise ValueError for a target outside ``[0, V)`` that is not ``ignore_index``.
            The check costs one device-to-host sync; it is skipped under ``torch.compile`` (it would
            break the graph) and when False (e.g. inside CUDA-graph capture), and then an out-of-range
            target gives a NaN loss (never an out-of-bounds read).
        return_lse: also return the per-token ``logsumexp`` of the capped logits (float32, shape
            ``targets.shape``, differentiable, e.g. for a z-loss).

    Returns:
        The float32 loss (a scalar, or per token for ``reduction="none"``), and with ``return_lse``
        the tuple ``(loss, lse)``. Gradients flow to ``logits`` in ``logits.dtype``.
    """
    c = softcap_value(softcap)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_inputs(logits, targets, ignore_index)
    if check_targets and not torch.compiler.is_compiling():
        check_target_range(targets, logits.shape[-1], ignore_index)
    if resolve_impl(impl, logits, targets) == "torch":
        loss, lse = softcap_ce_reference(logits, targets, softcap=c, ignore_index=ignore_index)
    else:
        rows = logits.reshape(-1, logits.shape[-1])
        if rows.stride(1) != 1:
            rows = rows.contiguous()
        loss, lse = softcap_ce_op(rows, targets.reshape(-1).contiguous(), c, ignore_index)
        loss, lse = loss.view(targets.shape), lse.view(targets.shape)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / (targets != ignore_index).sum()
    return (loss, lse) if return_lse else loss
