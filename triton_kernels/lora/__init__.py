"""Batched per-document LoRA for test-time training: the adapted linear, its gradients, a fused optimizer.

A batch holds ``D`` documents; document ``b`` has its own adapter ``A_b (r, in)``, ``B_b (out, r)``
and shares the frozen base weight ``W (out, in)``. With ``s = alpha / r`` and the valid-position mask
``m_b[t] = [t < lengths[b]]`` (all ones without ``lengths``; padding is on the right):

    h_b = x_b A_b^T                                  (T, r)   the rank-r intermediate
    y_b = x_b W^T + s * m_b * (h_b B_b^T)            (T, out)  (W = None: the delta alone, for bypass adapters)

Gradients, with ``dY_b`` the upstream gradient and ``g_b = m_b * (dY_b B_b)`` ``(T, r)``:

    dX_b = dY_b W + s * g_b A_b                      (the base path at every position, LoRA only where valid)
    dA_b = s * g_b^T X_b                             (r, in)   = s (dY_b B_b)^T X_b over valid tokens
    dB_b = s * (m_b dY_b)^T h_b                      (out, r)  = s dY_b^T (X_b A_b^T) over valid tokens

``W`` gets no gradient (it must not require one). Padded positions contribute nothing to ``dA`` or
``dB``, and their output and ``dX`` are the base path's alone: the gradients equal those of the same op
run on each document's valid tokens only.

Precision (the record's bf16 autocast on fp32 adapters): the compute dtype is ``x.dtype`` (or the
autocast dtype when autocast is on); ``A``, ``B``, ``W`` are cast to it, products accumulate in fp32,
``h`` is rounded to the compute dtype before the second product; ``y`` and ``dX`` have the compute
dtype, ``dA`` and ``dB`` the adapters' own dtypes. fp32 stays fp32 (no TF32).

The optimizer (:func:`lora_adamw_step_`) is torch.optim.AdamW with ``beta1 = 0`` and no first-moment
state: per document ``b`` with its own step ``t_b``,

    t_b += 1
    p   *= 1 - lr * wd                               (decoupled weight decay, applied first, like AdamW)
    v    = beta2 * v + (1 - beta2) * g^2
    p   -= lr * g / (sqrt(v) / sqrt(1 - beta2^t_b) + eps)      (= lr g / (sqrt(v_hat) + eps))

It keeps ``v`` (4 bytes per parameter) and one step per document, against AdamW's ``exp_avg`` and
``exp_avg_sq`` (8 bytes per parameter): half the state, and ``param + state`` is 8 bytes per
parameter instead of 12 (a third less). :func:`lora_reset_` zeroes ``B``, ``v`` and the step of
selected documents and keeps (or overwrites) ``A``.

Several adapters share one launch through a flat layout (:class:`LoraLayout`): row ``b`` of a
``(D, numel)`` buffer holds document ``b``'s A blocks, then its B blocks; :meth:`LoraLayout.views`
gives the ``(D, r, in)`` / ``(D, out, r)`` views the linear takes, and the gradient of the flat
buffer is what the optimizer reads.
"""
from __future__ import annotations

import torch

from .._dispatch import resolve_impl
from .layout import LoraLayout
from .ops import (
    check_lora_inputs,
    check_optimizer_state,
    check_reset_args,
    lora_adamw_step_triton_,
    lora_linear_op,
    lora_reset_triton_,
)
from .reference import (
    lora_adamw_step_reference_,
    lora_linear_reference,
    lora_reset_reference_,
)

__all__ = [
    "LoraLayout",
    "lora_adamw_step_",
    "lora_adamw_step_reference_",
    "lora_linear",
    "lora_linear_reference",
    "lora_reset_",
    "lora_reset_reference_",
]


def lora_linear(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, *, weight: torch.Tensor | None = None,
                scale: float, lengths: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """Per-document LoRA linear ``y_b = x_b W^T + s * m_b * (x_b A_b^T) B_b^T`` (math in the module docstring).

    Args:
        x: ``(D, T, in)`` activations, float32 / float16 / bfloat16, any strides.
        A: ``(D, r, in)`` per-document down projections (usually float32), ``1 <= r <= in``.
        B: ``(D, out, r)`` per-document up projections.
        weight: the shared frozen ``(out, in)`` base weight, or None for a pure delta (bypass adapters).
        scale: ``s = alpha / r``.
        lengths: optional int32/int64 ``(D,)`` valid lengths; positions ``t >= lengths[b]`` get no LoRA
            delta and contribute nothing to any adapter gradient (values are clamped to ``[0, T]``).
        impl: ``"auto"`` (Triton on CUDA or under ``TRITON_INTERPRET=1``, else the reference),
            ``"triton"`` or ``"torch"``.

    Returns ``(D, T, out)`` in the compute dtype, differentiable in ``x``, ``A`` and ``B``.

    The Triton path (rank up to 128) is the custom op ``triton_kernels::lora_linear`` (it survives
    ``torch.compile``): the base GEMM is ``torch.matmul`` (cuBLAS on a GPU) and one kernel adds the
    delta in place, ``x A^T`` kept in registers (never written); the backward is ``dY W`` in
    ``torch.matmul`` plus three kernels (``dX += s g A`` storing ``g``; ``h = x A^T``; ``dA`` and ``dB``
    in one launch, each summed over the document's valid tokens).
    """
    check_lora_inputs(x, A, B, weight, lengths, scale)
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    if resolve_impl(impl, x, A, B) == "torch":
        return lora_linear_reference(x, A, B, weight=weight, scale=float(scale), lengths=lengths)
    return lora_linear_op(x, A, B, None if weight is None else weight.detach(), lengths, float(scale))


def lora_adamw_step_(param: torch.Tensor, grad: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor, *,
                     lr: float, beta2: float, eps: float, weight_decay: float, impl: str = "auto") -> None:
    """One beta1 = 0 AdamW step of every document's parameters, in place (math in the module docstring).

    Args:
        param: ``(D, N)`` parameters, row ``b`` = document ``b`` (e.g. a :class:`LoraLayout` buffer),
            columns contiguous; float32 (or 16-bit).
        grad: ``(D, N)`` gradient of ``param``.
        exp_avg_sq: ``(D, N)`` float32 second moment ``v`` (zeros before a document's first step).
        step: ``(D,)`` int32/int64 steps taken per document; incremented here.
        lr, beta2, eps, weight_decay: as torch.optim.AdamW (the record: 1e-4, 0.99, 1e-10, 0.5).
        impl: ``"auto"``, ``"triton"`` or ``"torch"``.

    The Triton path is a ``D``-element ``step += 1`` and one launch over ``(N / BLOCK, D)`` programs;
    no host synchronisation. Matches ``torch.optim.AdamW(betas=(0, beta2))`` run on each document alone.
    """
    check_optimizer_state(param, exp_avg_sq, step, grad)
    if resolve_impl(impl, param, grad, exp_avg_sq, step) == "torch":
        lora_adamw_step_reference_(param, grad, exp_avg_sq, step, lr=lr, beta2=beta2, eps=eps,
                                   weight_decay=weight_decay)
    else:
        lora_adamw_step_triton_(param, grad, exp_avg_sq, step, lr=lr, beta2=beta2, eps=eps,
                                weight_decay=weight_decay)


def lora_reset_(param: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor, *, docs: torch.Tensor,
                keep: int, init: torch.Tensor | None = None, impl: str = "auto") -> None:
    """Start selected documents afresh, in place: ``B`` blocks, ``v`` and the step become 0.

    Args:
        param, exp_avg_sq, step: the optimizer's tensors (see :func:`lora_adamw_step_`).
        docs: ``(D,)`` bool (or integer, nonzero = selected) tensor on ``param``'s device.
        keep: columns ``[0, keep)`` of ``param`` are the A blocks (:attr:`LoraLayout.a_numel`); columns
            ``[keep, N)`` (the B blocks) are zeroed.
        init: ``None`` keeps the selected documents' A (the record's warm start); a ``(D, >= keep)``
            tensor overwrites columns ``[0, keep)`` of the selected rows with its rows (fresh random A).
        impl: ``"auto"``, ``"triton"`` (one launch) or ``"torch"``.
    """
    check_reset_args(param, exp_avg_sq, step, docs, keep, init)
    if resolve_impl(impl, param, exp_avg_sq, step, docs) == "torch":
        lora_reset_reference_(param, exp_avg_sq, step, docs=docs, keep=keep,
                              init=None if init is None else init[:, :keep])
    else:
        lora_reset_triton_(param, exp_avg_sq, step, docs=docs, keep=keep, init=init)
