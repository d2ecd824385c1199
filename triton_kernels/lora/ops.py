"""Launchers and ``torch.library`` custom ops of the batched LoRA kernels (``kernels.py``, imported on first launch).

Input checks shared by every path live here too (:func:`check_lora_inputs`, :func:`check_optimizer_state`).
"""
from __future__ import annotations

import math

import torch

from .._dispatch import interpreter_enabled

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int32, torch.int64)
MAX_TRITON_RANK = 128  # the rank-r intermediate is one [BT, BR] register tile
MAX_DOCS = 65535  # grid axis 1


def _kernels():
    """The kernels module, imported on first launch (never at package import)."""
    from . import kernels
    return kernels


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, n - 1).bit_length())


def shrink_expand_tiles(rank: int, dtype: torch.dtype, *, on_gpu: bool) -> dict:
    """Tiles of ``_lora_shrink_expand_kernel``: ``BT`` rows, ``BR`` the rank padded to a power of two, ``BK``
    the shrink's reduction step, ``BN`` the expand's column tile. 16-wide in the interpreter; on a GPU,
    untuned choices that compile for sm_90 without spills (``tests/test_sm90_compile.py``)."""
    br = _pow2(rank)
    if not on_gpu:
        return dict(BT=16, BR=br, BK=16, BN=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BT=32, BR=br, BK=32, BN=32, num_warps=4, num_stages=2)
    return dict(BT=64, BR=br, BK=64, BN=64, num_warps=4, num_stages=3)


def grad_tiles(rank: int, dtype: torch.dtype, *, on_gpu: bool) -> dict:
    """Tiles of ``_lora_grad_kernel``: ``BT`` tokens per reduction step, ``BR`` the padded rank, ``BN`` the
    ``in`` (dA) or ``out`` (dB) tile. Same provenance as :func:`shrink_expand_tiles`."""
    br = _pow2(rank)
    if not on_gpu:
        return dict(BT=16, BR=br, BN=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BT=32, BR=br, BN=32, num_warps=4, num_stages=2)
    return dict(BT=64, BR=br, BN=64, num_warps=4, num_stages=3)


def elementwise_block(*, on_gpu: bool) -> dict:
    """Block of the optimizer and reset kernels (columns per program)."""
    return dict(BLOCK=1024, num_warps=4) if on_gpu else dict(BLOCK=256, num_warps=4)


def expand_split(programs: int, n_tiles: int, device: torch.device) -> int:
    """How many programs share a row tile's output columns: enough to give every SM two programs."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_tiles, -(-2 * sms // max(programs, 1))))


def _precision(dtype: torch.dtype) -> str | None:
    return "ieee" if dtype == torch.float32 else None  # fp32 stays fp32 (no TF32)


def check_lora_inputs(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, weight: torch.Tensor | None,
                      lengths: torch.Tensor | None, scale: float) -> None:
    """ValueError naming the argument for any shape, dtype or device the batched LoRA linear cannot take."""
    for name, t in (("x", x), ("A", A), ("B", B), ("weight", weight)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if x.dim() != 3:
        raise ValueError(f"x must be (D, T, in), got shape {tuple(x.shape)}")
    D, _, n_in = x.shape
    if A.dim() != 3 or A.shape[0] != D or A.shape[2] != n_in:
        raise ValueError(f"A must be (D, r, in) = ({D}, r, {n_in}), got shape {tuple(A.shape)}")
    r = A.shape[1]
    if r < 1 or r > n_in:
        raise ValueError(f"A's rank r={r} must be in 1..in_features={n_in}")
    if B.dim() != 3 or B.shape[0] != D or B.shape[2] != r or B.shape[1] < 1:
        raise ValueError(f"B must be (D, out, r) = ({D}, out, {r}), got shape {tuple(B.shape)}")
    if weight is not None:
        if weight.dim() != 2 or tuple(weight.shape) != (B.shape[1], n_in):
            raise ValueError(f"weight must be (out, in) = ({B.shape[1]}, {n_in}), got shape {tuple(weight.shape)}")
        if weight.requires_grad and torch.is_grad_enabled():
            raise ValueError("weight requires grad, but this op computes no gradient for W: freeze it "
                             "(requires_grad_(False)) or pass weight.detach()")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor) or lengths.dtype not in INT_DTYPES or tuple(lengths.shape) != (D,):
            raise ValueError(f"lengths must be an int32/int64 tensor of shape ({D},), got "
                             f"{getattr(lengths, 'dtype', type(lengths).__name__)} {tuple(getattr(lengths, 'shape', ()))}")
        if lengths.device != x.device:
            raise ValueError(f"lengths is on {lengths.device} but x is on {x.device}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale!r}")


def _check_triton(x: torch.Tensor, rank: int) -> None:
    if not (x.is_cuda or (x.device.type == "cpu" and interpreter_enabled())):
        raise ValueError(f"the Triton LoRA kernels need CUDA tensors (or CPU ones under TRITON_INTERPRET=1), "
                         f"got {x.device}")
    if rank > MAX_TRITON_RANK:
        raise ValueError(f"rank {rank} > {MAX_TRITON_RANK} is not supported by the Triton path (use impl='torch')")
    if x.shape[0] > MAX_DOCS:
        raise ValueError(f"at most {MAX_DOCS} documents per call on the Triton path, got {x.shape[0]}")


def _launch_shrink_expand(p, u_strides, u, v_strides, v, base, out, mid, lengths, *, T, K, R, N, scale,
                          expand, split=None):
    """One ``_lora_shrink_expand_kernel`` launch over ``(row tiles, D, split)``."""
    cfg = shrink_expand_tiles(R, p.dtype, on_gpu=p.is_cuda)
    D = p.shape[0]
    n_t = -(-T // cfg["BT"])
    if split is None:
        split = expand_split(n_t * D, -(-N // cfg["BN"]), p.device) if expand else 1
    dummy = p  # never read: the flags compile the unused pointer away
    o_strides = out.stride() if out is not None else (0, 0, 0)
    m_strides = mid.stride() if mid is not None else (0, 0, 0)
    _kernels()._lora_shrink_expand_kernel[(n_t, D, split)](
        p, u, dummy if v is None else v, dummy if base is None else base, dummy if out is None else out,
        dummy if mid is None else mid, dummy if lengths is None else lengths,
        T, K, R, N, *p.stride(), *u_strides, *v_strides, *o_strides, *m_strides, float(scale),
        HAS_BASE=base is not None, HAS_LEN=lengths is not None, STORE_MID=mid is not None, EXPAND=expand,
        PRECISION=_precision(p.dtype), BT=cfg["BT"], BR=cfg["BR"], BK=cfg["BK"], BN=cfg["BN"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def lora_forward_triton(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, weight: torch.Tensor | None,
                        lengths: torch.Tensor | None, scale: float, *, split: int | None = None) -> torch.Tensor:
    """``y = x W^T + m * s (x A^T) B^T`` as a new contiguous ``(D, T, out)`` tensor of ``x.dtype``.

    The base GEMM is ``torch.matmul`` (cuBLAS on a GPU); one kernel launch then adds the LoRA delta in
    place, the rank-``r`` ``x A^T`` held in registers. ``split`` programs share each row tile's columns
    (``None``: :func:`expand_split`)."""
    check_lora_inputs(x, A, B, weight, lengths, scale)
    _check_triton(x, A.shape[1])
    D, T, K = x.shape
    R, N = A.shape[1], B.shape[1]
    y = torch.matmul(x, weight.to(x.dtype).t()) if weight is not None else torch.empty((D, T, N), dtype=x.dtype,
                                                                                      device=x.device)
    if D * T == 0:
        return y
    _launch_shrink_expand(x, (A.stride(0), A.stride(2), A.stride(1)), A, (B.stride(0), B.stride(2), B.stride(1)), B,
                          y if weight is not None else None, y, None, lengths, T=T, K=K, R=R, N=N, scale=scale,
                          expand=True, split=split)
    return y


def lora_backward_triton(dy: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         weight: torch.Tensor | None, lengths: torch.Tensor | None, scale: float, *,
                         split: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dX, dA, dB)`` of :func:`lora_forward_triton` for the upstream gradient ``dy`` ``(D, T, out)``.

    Four launches: ``dy W`` (``torch.matmul``), ``dX += s g A`` with ``g = m (dy B)`` stored, ``h = m (x A^T)``
    stored, and one kernel for ``dA = s g^T x`` and ``dB = s dy^T h`` over each document's valid tokens.
    ``g`` and ``h`` are ``(D, T, r)`` in ``x.dtype``. dX has ``x.dtype``; dA, dB the adapters' dtypes."""
    check_lora_inputs(x, A, B, weight, lengths, scale)
    _check_triton(x, A.shape[1])
    D, T, K = x.shape
    R, N = A.shape[1], B.shape[1]
    if tuple(dy.shape) != (D, T, N) or dy.device != x.device:
        raise ValueError(f"dy must be ({D}, {T}, {N}) on {x.device}, got {tuple(dy.shape)} on {dy.device}")
    dy = dy.to(x.dtype)
    dx = torch.matmul(dy, weight.to(x.dtype)) if weight is not None else torch.empty_like(x)
    dA = torch.empty(A.shape, dtype=A.dtype, device=x.device)
    dB = torch.empty(B.shape, dtype=B.dtype, device=x.device)
    if D * T == 0:
        return dx, dA.zero_(), dB.zero_()
    g = torch.empty((D, T, R), dtype=x.dtype, device=x.device)
    h = torch.empty((D, T, R), dtype=x.dtype, device=x.device)
    _launch_shrink_expand(dy, (B.stride(0), B.stride(1), B.stride(2)), B, (A.stride(0), A.stride(1), A.stride(2)), A,
                          dx if weight is not None else None, dx, g, lengths, T=T, K=N, R=R, N=K, scale=scale,
                          expand=True, split=split)
    _launch_shrink_expand(x, (A.stride(0), A.stride(2), A.stride(1)), A, (0, 0, 0), None, None, None, h, lengths,
                          T=T, K=K, R=R, N=0, scale=scale, expand=False)
    cfg = grad_tiles(R, x.dtype, on_gpu=x.is_cuda)
    n_a = -(-K // cfg["BN"])
    grid = (n_a + -(-N // cfg["BN"]), D)
    _kernels()._lora_grad_kernel[grid](
        g, x, dy, h, dA, dB, x if lengths is None else lengths, T, K, R, N, n_a,
        *g.stride(), *x.stride(), *dy.stride(), *h.stride(), *dA.stride(), *dB.stride(), float(scale),
        HAS_LEN=lengths is not None, PRECISION=_precision(x.dtype), BT=cfg["BT"], BR=cfg["BR"], BN=cfg["BN"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return dx, dA, dB


@torch.library.custom_op("triton_kernels::lora_linear", mutates_args=())
def lora_linear_op(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, weight: torch.Tensor | None,
                   lengths: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Custom-op form of :func:`lora_forward_triton` (traced opaquely by ``torch.compile``)."""
    return lora_forward_triton(x, A, B, weight, lengths, scale)


@lora_linear_op.register_fake
def _(x, A, B, weight, lengths, scale):
    return x.new_empty((x.shape[0], x.shape[1], B.shape[1]))


@torch.library.custom_op("triton_kernels::lora_linear_backward", mutates_args=())
def lora_linear_backward_op(dy: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                            weight: torch.Tensor | None, lengths: torch.Tensor | None,
                            scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Custom-op form of :func:`lora_backward_triton`."""
    return lora_backward_triton(dy.contiguous(), x, A, B, weight, lengths, scale)


@lora_linear_backward_op.register_fake
def _(dy, x, A, B, weight, lengths, scale):
    return torch.empty_like(x), torch.empty_like(A), torch.empty_like(B)


def _setup_context(ctx, inputs, output):
    x, A, B, weight, lengths, scale = inputs
    ctx.save_for_backward(x, A, B, weight, lengths)
    ctx.scale = scale


def _backward(ctx, dy):
    x, A, B, weight, lengths = ctx.saved_tensors
    dx, dA, dB = lora_linear_backward_op(dy, x, A, B, weight, lengths, ctx.scale)
    return dx, dA, dB, None, None, None


lora_linear_op.register_autograd(_backward, setup_context=_setup_context)


def check_optimizer_state(param: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor,
                          grad: torch.Tensor | None = None) -> None:
    """ValueError naming the argument unless ``param``, ``grad``, ``exp_avg_sq`` are ``(D, N)`` with unit column
    stride on one device (``exp_avg_sq`` float32) and ``step`` is an int32/int64 ``(D,)`` tensor."""
    named = (("param", param), ("grad", grad), ("exp_avg_sq", exp_avg_sq))
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.stride(1) != 1:
            raise ValueError(f"{name} must be a (D, N) tensor with contiguous rows, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.shape != param.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, param {tuple(param.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.device != param.device:
            raise ValueError(f"{name} is on {t.device} but param is on {param.device}")
    if exp_avg_sq.dtype != torch.float32:
        raise ValueError(f"exp_avg_sq must be float32, got {exp_avg_sq.dtype}")
    if (not isinstance(step, torch.Tensor) or step.dtype not in INT_DTYPES or tuple(step.shape) != (param.shape[0],)
            or step.device != param.device):
        raise ValueError(f"step must be an int32/int64 tensor of shape ({param.shape[0]},) on {param.device}, got "
                         f"{getattr(step, 'dtype', type(step).__name__)} {tuple(getattr(step, 'shape', ()))}")


def check_reset_args(param: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor, docs: torch.Tensor,
                     keep: int, init: torch.Tensor | None) -> None:
    """ValueError naming the argument for a reset the optimizer state cannot take (see ``lora_reset_``)."""
    check_optimizer_state(param, exp_avg_sq, step)
    D, N = param.shape
    if not isinstance(docs, torch.Tensor) or tuple(docs.shape) != (D,) or docs.device != param.device \
            or docs.is_floating_point():
        raise ValueError(f"docs must be a bool or integer tensor of shape ({D},) on {param.device}")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= N:
        raise ValueError(f"keep must be an int in 0..{N}, got {keep!r}")
    if init is not None and (not isinstance(init, torch.Tensor) or init.dim() != 2 or init.shape[0] != D
                             or init.shape[1] < keep or init.stride(1) != 1 or init.device != param.device
                             or init.dtype not in FLOAT_DTYPES):
        raise ValueError(f"init must be a float ({D}, >= {keep}) tensor with contiguous rows on {param.device}, "
                         f"got {getattr(init, 'dtype', type(init).__name__)} {tuple(getattr(init, 'shape', ()))}")


def _elementwise_grid(param: torch.Tensor) -> tuple[dict, tuple[int, int]]:
    if not (param.is_cuda or (param.device.type == "cpu" and interpreter_enabled())):
        raise ValueError(f"the Triton LoRA optimizer needs CUDA tensors (or CPU ones under TRITON_INTERPRET=1), "
                         f"got {param.device}")
    if param.shape[0] > MAX_DOCS:
        raise ValueError(f"at most {MAX_DOCS} documents per call on the Triton path, got {param.shape[0]}")
    cfg = elementwise_block(on_gpu=param.is_cuda)
    return cfg, (-(-param.shape[1] // cfg["BLOCK"]), param.shape[0])


def lora_adamw_step_triton_(param: torch.Tensor, grad: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor,
                            *, lr: float, beta2: float, eps: float, weight_decay: float) -> None:
    """In place: ``step += 1`` (a ``D``-element torch op), then one launch updating every column of every document."""
    check_optimizer_state(param, exp_avg_sq, step, grad)
    cfg, grid = _elementwise_grid(param)
    step.add_(1)
    if param.numel() == 0:
        return
    log_beta2 = torch.full((1,), math.log(beta2), dtype=torch.float64, device=param.device)
    _kernels()._lora_adamw_kernel[grid](param, grad, exp_avg_sq, step, log_beta2, param.shape[1], param.stride(0),
                                        grad.stride(0), exp_avg_sq.stride(0), float(lr), float(beta2),
                                        float(1.0 - beta2), float(1.0 - lr * weight_decay), float(eps), **cfg)


def lora_reset_triton_(param: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor, *, docs: torch.Tensor,
                       keep: int, init: torch.Tensor | None = None) -> None:
    """In place, one launch: for documents with ``docs[b]`` true, ``param[b, keep:] = 0``,
    ``param[b, :keep] = init[b, :keep]`` when ``init`` is given, ``exp_avg_sq[b] = 0``, ``step[b] = 0``."""
    check_reset_args(param, exp_avg_sq, step, docs, keep, init)
    cfg, grid = _elementwise_grid(param)
    if param.numel() == 0:
        step.masked_fill_(docs.to(torch.bool), 0)
        return
    _kernels()._lora_reset_kernel[grid](param, exp_avg_sq, step, docs, param if init is None else init,
                                        param.shape[1], keep, param.stride(0), exp_avg_sq.stride(0),
                                        0 if init is None else init.stride(0), HAS_INIT=init is not None, **cfg)
