"""Pure-torch softcapped cross-entropy: the test oracle and the CPU fallback (no Triton import).

Also home of the input checks every path shares. The math is in the package docstring
(``triton_kernels/softcap_ce/__init__.py``).
"""
from __future__ import annotations

import math

import torch

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def softcap_value(softcap: float | None) -> float:
    """``softcap`` as a float, with ``0.0`` meaning "no softcap" (``None`` or ``0``).

    Raises TypeError unless it is None or a real number, ValueError if it is not finite or negative.
    """
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a finite number >= 0 or None, got {softcap!r}")
    c = float(softcap)
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"softcap must be a finite number >= 0 or None, got {softcap!r}")
    return c


def check_inputs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> None:
    """Dtypes, shapes and devices of ``logits [..., V]`` and ``targets [...]`` (no device sync)."""
    if not isinstance(logits, torch.Tensor) or logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"logits must be a float32, float16 or bfloat16 tensor, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64:
        raise TypeError(f"targets must be an int64 tensor, got {getattr(targets, 'dtype', type(targets).__name__)}")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be [..., V] with V >= 1, got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have the shape of logits without its last dim, "
                         f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    if targets.device != logits.device:
        raise ValueError(f"targets is on {targets.device} but logits is on {logits.device}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")


def check_target_range(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """ValueError if a target other than ``ignore_index`` is outside ``[0, vocab)`` (one device sync)."""
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        first = targets[bad][0].item()
        raise ValueError(f"targets must be in [0, {vocab}) or equal ignore_index={ignore_index}; "
                         f"{int(bad.sum())} are not, e.g. {first}")


def softcap_ce_reference(logits: torch.Tensor, targets: torch.Tensor, *, softcap: float | None = 30.0,
                         ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(loss, lse)`` in float32, shape ``targets.shape``, differentiable in ``logits``.

    ``z = c * tanh(logits.float() / c)`` (``z = logits.float()`` without a softcap),
    ``lse = logsumexp(z)``, ``loss = lse - z[target]``; ``loss = 0`` where ``target == ignore_index``
    and NaN where a target is out of range (no check here: see :func:`check_target_range`).
    """
    c = softcap_value(softcap)
    check_inputs(logits, targets, ignore_index)
    vocab = logits.shape[-1]
    z = logits.float()
    if c:
        z = c * torch.tanh(z / c)
    lse = torch.logsumexp(z, dim=-1)
    valid = targets != ignore_index
    in_range = (targets >= 0) & (targets < vocab)
    z_y = z.gather(-1, torch.where(valid & in_range, targets, 0).unsqueeze(-1)).squeeze(-1)
    loss = torch.where(valid, lse - z_y, 0.0)
    return torch.where(valid & ~in_range, math.nan, loss), lse
