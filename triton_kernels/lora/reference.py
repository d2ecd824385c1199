"""Pure-torch references of the batched LoRA ops: the test oracle and the CPU fallback.

No Triton import. The math is in ``triton_kernels/lora/__init__.py`` and ``triton_kernels/README.md``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def valid_mask(lengths: torch.Tensor | None, D: int, T: int, device: torch.device) -> torch.Tensor | None:
    """``m[b, t] = t < lengths[b]`` as a ``(D, T, 1)`` bool tensor, or None without lengths."""
    if lengths is None:
        return None
    return (torch.arange(T, device=device)[None, :] < lengths.to(device)[:, None])[..., None]


def lora_linear_reference(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, *, weight: torch.Tensor | None,
                          scale: float, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``y_b = x_b W^T + m_b * s * (x_b A_b^T) B_b^T`` with ``torch.bmm``, everything in ``x.dtype``.

    ``A`` and ``B`` are cast to ``x.dtype`` first (what bf16 autocast does to fp32 adapters), so
    ``x A^T`` is rounded to ``x.dtype`` before the second product, like the record's adapters.
    Autograd gives the gradients (``dA``, ``dB`` in the adapters' dtype); ``W`` is used detached.
    """
    dt = x.dtype
    h = torch.bmm(x, A.to(dt).transpose(1, 2))  # [D, T, r]
    delta = torch.bmm(h, B.to(dt).transpose(1, 2)) * scale  # [D, T, out]
    m = valid_mask(lengths, x.shape[0], x.shape[1], x.device)
    if m is not None:
        delta = torch.where(m, delta, torch.zeros((), dtype=dt, device=x.device))
    if weight is None:
        return delta
    return F.linear(x, weight.detach().to(dt)) + delta


@torch.no_grad()
def lora_adamw_step_reference_(param: torch.Tensor, grad: torch.Tensor, exp_avg_sq: torch.Tensor,
                               step: torch.Tensor, *, lr: float, beta2: float, eps: float,
                               weight_decay: float) -> None:
    """In place, per document ``b`` (row of the ``(D, N)`` tensors), torch.optim.AdamW's order with beta1 = 0:

    ``t_b += 1; p *= 1 - lr wd; v = beta2 v + (1 - beta2) g^2; p -= lr g / (sqrt(v) / sqrt(1 - beta2^t_b) + eps)``.
    """
    step += 1
    bc2_sqrt = (1.0 - torch.exp(step.double() * math.log(beta2))).sqrt().to(param.dtype)[:, None]  # [D, 1]
    param.mul_(1.0 - lr * weight_decay)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    param.addcdiv_(grad, exp_avg_sq.sqrt() / bc2_sqrt + eps, value=-lr)


@torch.no_grad()
def lora_reset_reference_(param: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor, *,
                          docs: torch.Tensor, keep: int, init: torch.Tensor | None = None) -> None:
    """For the documents where ``docs`` is true: columns ``keep:`` of ``param`` (the B blocks) and the
    whole ``exp_avg_sq`` row become 0, the step becomes 0, and columns ``:keep`` (the A blocks) are
    kept, or copied from ``init[b]`` when it is given."""
    sel = docs.to(torch.bool)[:, None]  # [D, 1]
    zero = torch.zeros((), dtype=param.dtype, device=param.device)
    param[:, keep:] = torch.where(sel, zero, param[:, keep:])
    if init is not None:
        param[:, :keep] = torch.where(sel, init.to(param.dtype), param[:, :keep])
    exp_avg_sq.copy_(torch.where(sel, torch.zeros((), dtype=exp_avg_sq.dtype, device=exp_avg_sq.device), exp_avg_sq))
    step.copy_(torch.where(sel[:, 0], torch.zeros((), dtype=step.dtype, device=step.device), step))
