"""Launchers and ``torch.library`` custom ops of the softcapped cross-entropy (Triton path).

``softcap_ce_fwd_triton`` / ``softcap_ce_bwd_triton`` are the typed launchers (2-D logits, 1-D
targets); ``softcap_ce_op`` is the differentiable custom op ``triton_kernels::softcap_ce`` that the
public function calls, so the Triton path traces under ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import math

import torch

from .reference import LOGIT_DTYPES

# With a softcap c <= FIXED_MAX_SOFTCAP the forward sums exp(z - c) directly: z - c >= -2c and
# exp(-80) ~ 1.8e-35 is still a normal float32, so no term underflows and no running max is needed.
FIXED_MAX_SOFTCAP = 40.0


def _kernels():
    """The kernels module, imported on first launch (never at package import)."""
    from . import kernels
    return kernels


def ce_tiles(vocab: int, *, on_gpu: bool) -> dict:
    """Column block and warps of both kernels for a row of ``vocab`` logits.

    GPU: the whole row up to 1,024 columns per block (at least 128), 4 warps, as the record stack's
    kernel; untuned, checked to compile for sm_90 without spills (``tests/test_sm90_compile.py``).
    Interpreter: 128-wide blocks, so test rows of a few hundred columns span several blocks.
    """
    if not on_gpu:
        return dict(BLOCK_V=128, num_warps=4)
    return dict(BLOCK_V=min(1024, max(128, 1 << max(0, vocab - 1).bit_length())), num_warps=4)


def _tiles(logits: torch.Tensor, block_v: int | None) -> dict:
    tiles = ce_tiles(logits.shape[1], on_gpu=logits.is_cuda)
    if block_v is not None:
        if block_v < 1 or block_v & (block_v - 1):
            raise ValueError(f"block_v must be a power of two, got {block_v}")
        tiles["BLOCK_V"] = block_v
    return tiles


def _check_rows(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> None:
    if logits.ndim != 2 or logits.dtype not in LOGIT_DTYPES or logits.shape[1] == 0:
        raise ValueError(f"logits must be a 2-D float32/float16/bfloat16 tensor [N, V], V >= 1, "
                         f"got {logits.dtype} {tuple(logits.shape)}")
    if logits.stride(1) != 1:
        raise ValueError("logits rows must be contiguous (stride 1 along the vocabulary)")
    if targets.dtype != torch.int64 or targets.shape != logits.shape[:1] or not targets.is_contiguous():
        raise ValueError(f"targets must be a contiguous int64 tensor of shape ({logits.shape[0]},), "
                         f"got {targets.dtype} {tuple(targets.shape)}")
    if targets.device != logits.device:
        raise ValueError(f"targets is on {targets.device} but logits is on {logits.device}")
    if not (math.isfinite(softcap) and softcap >= 0.0):
        raise ValueError(f"softcap must be finite and >= 0 (0: none), got {softcap}")


def _check_row_vector(t: torch.Tensor, name: str, logits: torch.Tensor) -> None:
    if t.dtype != torch.float32 or t.shape != logits.shape[:1] or not t.is_contiguous() or t.device != logits.device:
        raise ValueError(f"{name} must be a contiguous float32 tensor of shape ({logits.shape[0]},) on "
                         f"{logits.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")


def softcap_ce_fwd_triton(logits: torch.Tensor, targets: torch.Tensor, *, softcap: float, ignore_index: int,
                          block_v: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(loss, lse)`` float32 ``[N]`` of ``logits [N, V]`` (softcap ``0.0``: none), one launch.

    Ignored rows get loss 0, rows whose target is out of ``[0, V)`` get NaN (no range check here).
    ``block_v`` overrides the column block of :func:`ce_tiles` (a power of two).
    """
    _check_rows(logits, targets, softcap)
    tiles = _tiles(logits, block_v)
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _kernels()._softcap_ce_fwd_kernel[(n,)](
            logits, targets, loss, lse, vocab, logits.stride(0), softcap, ignore_index,
            SOFTCAP=softcap > 0, FIXED_MAX=0 < softcap <= FIXED_MAX_SOFTCAP, **tiles)
    return loss, lse


def softcap_ce_bwd_triton(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, dloss: torch.Tensor,
                          dlse: torch.Tensor, *, softcap: float, ignore_index: int,
                          block_v: int | None = None) -> torch.Tensor:
    """``dlogits [N, V]`` in ``logits.dtype`` from the raw logits, the forward's ``lse`` and the
    float32 ``[N]`` gradients of loss and lse; one launch."""
    _check_rows(logits, targets, softcap)
    for name, t in (("lse", lse), ("dloss", dloss), ("dlse", dlse)):
        _check_row_vector(t, name, logits)
    tiles = _tiles(logits, block_v)
    n, vocab = logits.shape
    dlogits = torch.empty((n, vocab), dtype=logits.dtype, device=logits.device)
    if n:
        _kernels()._softcap_ce_bwd_kernel[(n,)](
            logits, targets, lse, dloss, dlse, dlogits, vocab, logits.stride(0), dlogits.stride(0), softcap,
            ignore_index, SOFTCAP=softcap > 0, **tiles)
    return dlogits


@torch.library.custom_op("triton_kernels::softcap_ce", mutates_args=())
def softcap_ce_op(logits: torch.Tensor, targets: torch.Tensor, softcap: float,
                  ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(loss, lse)`` of 2-D logits; differentiable in ``logits`` through both outputs."""
    return softcap_ce_fwd_triton(logits, targets, softcap=softcap, ignore_index=ignore_index)


@softcap_ce_op.register_fake
def _(logits, targets, softcap, ignore_index):
    return logits.new_empty(logits.shape[:1], dtype=torch.float32), logits.new_empty(logits.shape[:1],
                                                                                    dtype=torch.float32)


@torch.library.custom_op("triton_kernels::softcap_ce_backward", mutates_args=())
def _softcap_ce_backward_op(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, dloss: torch.Tensor,
                            dlse: torch.Tensor, softcap: float, ignore_index: int) -> torch.Tensor:
    return softcap_ce_bwd_triton(logits, targets, lse, dloss, dlse, softcap=softcap, ignore_index=ignore_index)


@_softcap_ce_backward_op.register_fake
def _(logits, targets, lse, dloss, dlse, softcap, ignore_index):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    logits, targets, softcap, ignore_index = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.softcap, ctx.ignore_index = softcap, ignore_index


def _backward(ctx, dloss, dlse):
    # autograd materialises the gradient of an unused output as zeros: both are tensors
    logits, targets, lse = ctx.saved_tensors
    dloss, dlse = dloss.float().contiguous(), dlse.float().contiguous()
    return _softcap_ce_backward_op(logits, targets, lse, dloss, dlse, ctx.softcap, ctx.ignore_index), None, None, None


softcap_ce_op.register_autograd(_backward, setup_context=_setup_context)
