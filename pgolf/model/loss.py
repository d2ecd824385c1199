"""The training and scoring loss: cross-entropy of soft-capped logits ``c * tanh(l / c)``.

This is the one place the loss is computed from raw (pre-softcap) logits, so a fused kernel
(``triton_kernels/softcap_ce``: softcap + log-sum-exp in one pass, fp32 inside) can replace the
body without touching the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def softcap(raw_logits: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(raw_logits / cap)`` in the logits' dtype."""
    return cap * torch.tanh(raw_logits / cap)


def softcapped_cross_entropy(raw_logits: torch.Tensor, targets: torch.Tensor, *, cap: float,
                             reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats, fp32) of ``softcap(raw_logits [B, T, V])`` against ``targets [B, T]``;
    ``reduction="none"`` gives ``[B, T]``."""
    z = softcap(raw_logits, cap).float()
    loss = F.cross_entropy(z.flatten(0, 1), targets.flatten(), reduction=reduction)
    return loss.view_as(targets) if reduction == "none" else loss
