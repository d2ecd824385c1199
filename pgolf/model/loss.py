"""The training and scoring loss: cross-entropy of soft-capped logits ``c * tanh(l / c)``.

This is the one place the loss is computed from raw (pre-softcap) logits. ``impl``
(``model.loss_impl``) picks how:

- ``"torch"``: ``z = c * tanh(l / c)`` in the logits' dtype (bf16 under autocast), then
  ``F.cross_entropy(z.float(), y)``: train_gpt.py's order of roundings, and pgolf's default;
- ``"fused"``: :func:`triton_kernels.softcap_ce.softcap_cross_entropy`'s Triton kernel, one pass
  over the vocabulary with the softcap applied in fp32 inside it and the backward recomputed from the
  raw logits (the capped logits are never stored). It runs on CUDA tensors, or on the CPU under
  ``TRITON_INTERPRET=1``; elsewhere it is an error naming ``model.loss_impl``;
- ``"auto"``: ``"fused"`` where the kernel can run, ``"torch"`` elsewhere.

The two compute the same function; they differ by rounding only (in fp32 by a few ulps; under bf16
autocast the fused kernel is the more exact, as it caps the logits in fp32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pgolf.config import ConfigError
from pgolf.config.sections import LOSS_IMPLS
from triton_kernels._dispatch import triton_unavailable


def softcap(raw_logits: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(raw_logits / cap)`` in the logits' dtype."""
    return cap * torch.tanh(raw_logits / cap)


def fused_loss_unavailable(impl: str, *tensors: torch.Tensor) -> str | None:
    """Why ``impl`` cannot run for these tensors (none given: on this machine's default device), or
    None; ``"torch"`` and ``"auto"`` always can. Raises ConfigError for an unknown ``impl``."""
    if impl not in LOSS_IMPLS:
        raise ConfigError(f"model.loss_impl must be one of {', '.join(LOSS_IMPLS)}, got {impl!r}")
    if impl != "fused":
        return None
    reason = triton_unavailable(*tensors)
    return None if reason is None else (f"model.loss_impl='fused' runs the Triton softcap cross-entropy kernel, "
                                        f"which {reason}; set model.loss_impl=auto (the kernel where it can run) "
                                        f"or torch")


def softcapped_cross_entropy(raw_logits: torch.Tensor, targets: torch.Tensor, *, cap: float,
                             reduction: str = "mean", impl: str = "torch") -> torch.Tensor:
    """Cross-entropy (nats, fp32) of ``softcap(raw_logits [B, T, V])`` against ``targets [B, T]``;
    ``reduction="none"`` gives ``[B, T]``. ``impl``: ``"torch"``, ``"fused"`` or ``"auto"`` (module
    docstring)."""
    problem = fused_loss_unavailable(impl, raw_logits)
    if problem is not None:
        raise ConfigError(problem)
    if impl == "fused" or (impl == "auto" and triton_unavailable(raw_logits) is None):
        # imported here: a run with model.loss_impl=torch never loads (nor bundles) the kernel
        from triton_kernels.softcap_ce import softcap_cross_entropy
        return softcap_cross_entropy(raw_logits, targets, softcap=cap, reduction=reduction, impl="triton")
    z = softcap(raw_logits, cap).float()
    loss = F.cross_entropy(z.flatten(0, 1), targets.flatten(), reduction=reduction)
    return loss.view_as(targets) if reduction == "none" else loss
