"""Launchers, custom ops and the Triton-path public functions of the fake quantiser."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import resolve_impl
from .reference import (FLOAT_DTYPES, SURROGATES, check_rule, check_temperature, check_weight,
                        fake_quant_reference, qmax_for, row_scales_reference,
                        with_fake_quant_grad)
from .step_cache import STEP_CACHE


def row_scales(w: torch.Tensor, *, bits: int, rule: str = "maxabs", percentile: float = 99.99984,
               sigma: float = 12.85, impl: str = "auto") -> torch.Tensor:
    """Per-row float16 scales of a 2-D weight (one kernel launch on the Triton path).

    ``maxabs`` and ``sigma`` run as one launch of the weight kernel (scales only); ``percentile``
    always uses ``torch.quantile`` (a per-row selection, not worth a kernel). Every path gives the
    same bits.
    """
    if resolve_impl(impl, w) == "torch" or rule == "percentile":
        return row_scales_reference(w, bits=bits, rule=rule, percentile=percentile, sigma=sigma)
    qmax_for(bits)
    check_rule(rule, percentile, sigma)
    return _row_scales_op(w.detach(), bits, rule, float(sigma))


def _kernels():
    """``(triton, kernels module)``, imported on first launch (never at package import)."""
    import triton

    from . import kernels
    return triton, kernels


_RULE_IDS = {"given": 0, "maxabs": 1, "sigma": 2}


def dw_tile_config(dtype: torch.dtype, *, on_gpu: bool) -> dict:
    """Every launch setting of the dW kernel for inputs of ``dtype``: the dot's ``PREC`` (``"ieee"``
    for float32, so fp32 QAT never rounds through TF32; 16-bit dots are exact products either way)
    and the tiles: 16-wide in the interpreter; on a GPU, untuned choices that compile for sm_90
    without register spills (``tests/test_sm90_compile.py`` compiles exactly these); their speed is
    unmeasured."""
    prec = "ieee" if dtype == torch.float32 else "tf32"
    if not on_gpu:
        return dict(PREC=prec, BM=16, BN=16, BK=16)
    if dtype == torch.float32:
        return dict(PREC=prec, BM=64, BN=64, BK=32, num_warps=4, num_stages=2)
    return dict(PREC=prec, BM=128, BN=128, BK=64, num_warps=8, num_stages=3)


def weight_block(cols: int, *, on_gpu: bool) -> int:
    """Row chunk of the weight kernel: the whole row up to 1024 columns on a GPU, 16 in the interpreter."""
    return min(1024, 1 << max(0, cols - 1).bit_length()) if on_gpu else 16


def _check_flag(t: torch.Tensor, name: str, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor) or t.numel() != 1:
        raise TypeError(f"{name} must be a one-element tensor, got {type(t).__name__}"
                        f"{'' if not isinstance(t, torch.Tensor) else tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")


def _check_scale(scale: torch.Tensor, weight: torch.Tensor) -> None:
    if scale.dtype != torch.float16 or scale.shape != (weight.shape[0],) or scale.device != weight.device:
        raise ValueError(f"scale must be float16 of shape ({weight.shape[0]},) on {weight.device}, "
                         f"got {scale.dtype} {tuple(scale.shape)} on {scale.device}")


def fq_weight_triton(w: torch.Tensor, *, bits: int, rule: str, sigma: float = 12.85,
                     scale: torch.Tensor | None = None, active: torch.Tensor | None = None,
                     out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One launch: per-row float16 scales of ``w`` (rows, cols) and ``where(active, fq(W), W)``.

    ``rule`` is ``"maxabs"`` or ``"sigma"``, or ``"given"`` with ``scale`` supplied (the
    ``percentile`` rule: its scales come from ``torch.quantile``). With ``out_dtype`` the weight is
    written in that dtype (``fq`` in float32, cast to ``w.dtype``, then to ``out_dtype``: exactly the
    reference's ``fake_quant_weight(w).to(out_dtype)``); without it only the scales are computed and
    the second result is None. Returns ``(scale, wq)``.
    """
    qmax = qmax_for(bits)
    check_weight(w)
    if rule not in _RULE_IDS:
        raise ValueError(f"the Triton weight kernel handles {sorted(_RULE_IDS)}, got {rule!r}")
    if (scale is None) == (rule == "given"):
        raise ValueError("pass scale exactly when rule='given'")
    if w.stride(1) != 1:
        raise ValueError("weight rows must be contiguous (stride 1 along columns)")
    if scale is not None:
        _check_scale(scale, w)
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    if active is None:
        active = torch.ones((), dtype=torch.bool, device=w.device)
    _check_flag(active, "active", w.device)
    triton, k = _kernels()
    s_out = torch.empty(w.shape[0], dtype=torch.float16, device=w.device)
    wq = None if out_dtype is None else torch.empty(w.shape, dtype=out_dtype, device=w.device)
    k._fq_weight_kernel[(w.shape[0],)](w, s_out if scale is None else scale, active, s_out,
                                       s_out if wq is None else wq, w.shape[1], w.stride(0),
                                       0 if wq is None else wq.stride(0), float(sigma),
                                       QMAX=qmax, RULE=_RULE_IDS[rule], WRITE_WQ=wq is not None,
                                       BLOCK=weight_block(w.shape[1], on_gpu=w.is_cuda))
    return s_out, wq


def fq_linear_dw_triton(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, *,
                        bits: int, active: torch.Tensor, surrogate: str = "ste",
                        temperature: torch.Tensor | None = None, split_m: int | None = None) -> torch.Tensor:
    """``dW = g(W) * (dy^T x)`` (``g`` = clip mask x surrogate slope, 1 when inactive), in ``W.dtype``.

    ``dy`` (M, N) and ``x`` (M, K) contiguous, of one float dtype; ``W`` (N, K). The token dimension
    is split over ``split_m`` programs writing float32 partials that are summed afterwards
    (deterministic, no atomics); ``None`` picks enough splits to fill the GPU.
    """
    qmax = qmax_for(bits)
    check_weight(weight)
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    for name, t in (("x", x), ("dy", dy)):
        if t.ndim != 2 or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a 2-D float32, float16 or bfloat16 tensor, got {t.dtype} {tuple(t.shape)}")
        if t.device != weight.device:
            raise ValueError(f"{name} is on {t.device} but weight is on {weight.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if dy.dtype != x.dtype:
        raise TypeError(f"dy and x must have one dtype, got {dy.dtype} and {x.dtype}")
    (M, K), N = x.shape, weight.shape[0]
    if dy.shape != (M, N) or weight.shape[1] != K or not weight.is_contiguous():
        raise ValueError(f"shapes do not match: dy {tuple(dy.shape)}, x {tuple(x.shape)}, weight {tuple(weight.shape)}"
                         " (weight must be contiguous)")
    _check_scale(scale, weight)
    _check_flag(active, "active", x.device)
    if temperature is None:
        temperature = torch.ones((), device=x.device)
    _check_flag(temperature, "temperature", x.device)
    triton, k = _kernels()
    cfg = dw_tile_config(x.dtype, on_gpu=x.is_cuda)
    tiles = triton.cdiv(N, cfg["BN"]) * triton.cdiv(K, cfg["BK"])
    if split_m is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
        split_m = max(1, min(triton.cdiv(2 * sms, tiles), triton.cdiv(M, 4 * cfg["BM"])))
    m_per_split = triton.cdiv(triton.cdiv(M, split_m), cfg["BM"]) * cfg["BM"]
    split_m = triton.cdiv(M, m_per_split)
    if split_m == 1:
        out = torch.empty((1, N, K), dtype=weight.dtype, device=x.device)
    else:
        out = torch.empty((split_m, N, K), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(N, cfg["BN"]), triton.cdiv(K, cfg["BK"]), split_m)
    k._fq_linear_dw_kernel[grid](dy, x, weight, scale, active, temperature, out, M, N, K, m_per_split,
                                 dy.stride(0), x.stride(0), weight.stride(0), out.stride(0), out.stride(1),
                                 QMAX=qmax, SOFT=surrogate == "softround", **cfg)
    return out[0] if split_m == 1 else out.sum(dim=0).to(weight.dtype)


@torch.library.custom_op("triton_kernels::fq_row_scales", mutates_args=())
def _row_scales_op(w: torch.Tensor, bits: int, rule: str, sigma: float) -> torch.Tensor:
    return fq_weight_triton(w.contiguous(), bits=bits, rule=rule, sigma=sigma)[0]


@_row_scales_op.register_fake
def _(w, bits, rule, sigma):
    return w.new_empty(w.shape[0], dtype=torch.float16)


@torch.library.custom_op("triton_kernels::fq_weight", mutates_args=())
def _fq_weight_op(w: torch.Tensor, active: torch.Tensor | None, bits: int, rule: str, percentile: float, sigma: float,
                  out_dtype: torch.dtype, impl: str, cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, where(active, fq(W), W) in out_dtype)`` (``active`` None: always on), by the Triton
    kernel or the reference. Opaque to ``torch.compile``: Inductor cannot rewrite its division (as a
    multiplication by a reciprocal, or an approximate GPU division) or reorder its reductions, so
    compiled QAT computes exactly what the exporter does. With ``cache`` the result is reused until
    ``w`` or ``active`` is written (:mod:`.step_cache`: once per optimiser step)."""
    def compute():
        return _fq_weight(w, active, bits, rule, percentile, sigma, out_dtype, impl)
    if not cache:
        return compute()
    return STEP_CACHE.get((w, active), ("fq_weight", impl, bits, rule, percentile, sigma, out_dtype), compute)


@_fq_weight_op.register_fake
def _(w, active, bits, rule, percentile, sigma, out_dtype, impl, cache):
    return w.new_empty(w.shape[0], dtype=torch.float16), w.new_empty(w.shape, dtype=out_dtype)


def _fq_weight(w: torch.Tensor, active: torch.Tensor | None, bits: int, rule: str, percentile: float, sigma: float,
               out_dtype: torch.dtype, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "torch":
        scale = row_scales_reference(w, bits=bits, rule=rule, percentile=percentile, sigma=sigma)
        fq_w = fake_quant_reference(w, scale, bits).to(w.dtype)
        return scale, (fq_w if active is None else torch.where(active, fq_w, w)).to(out_dtype)
    given = None
    if rule == "percentile":  # torch.quantile's scales: a per-row selection, not worth a kernel
        given = row_scales_reference(w, bits=bits, rule=rule, percentile=percentile)
    return fq_weight_triton(w.contiguous(), bits=bits, rule="given" if given is not None else rule, sigma=sigma,
                            scale=given, active=active, out_dtype=out_dtype)


def _cacheable(weight: torch.Tensor, *, compiled_ok: bool) -> bool:
    """Cache ``fq(W)`` only for a training forward (autograd keeps the result for the backward, so no
    one writes into it; under ``torch.compile`` that holds where the result is saved for the
    backward pass, ``compiled_ok``)."""
    return torch.is_grad_enabled() and weight.requires_grad and (compiled_ok or not torch.compiler.is_compiling())


@torch.library.custom_op("triton_kernels::fq_linear", mutates_args=())
def _fq_linear_op(x: torch.Tensor, wq: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                  active: torch.Tensor, temperature: torch.Tensor, bits: int, surrogate: str) -> torch.Tensor:
    return torch.mm(x, wq.t())


@_fq_linear_op.register_fake
def _(x, wq, weight, scale, active, temperature, bits, surrogate):
    return x.new_empty(x.shape[0], wq.shape[0])


@torch.library.custom_op("triton_kernels::fq_linear_backward", mutates_args=())
def _fq_linear_backward_op(dy: torch.Tensor, x: torch.Tensor, wq: torch.Tensor, weight: torch.Tensor,
                           scale: torch.Tensor, active: torch.Tensor, temperature: torch.Tensor, bits: int,
                           surrogate: str) -> tuple[torch.Tensor, torch.Tensor]:
    dy = dy.contiguous()
    dw = fq_linear_dw_triton(dy, x, weight, scale, bits=bits, active=active, surrogate=surrogate,
                             temperature=temperature)
    return torch.mm(dy, wq), dw


@_fq_linear_backward_op.register_fake
def _(dy, x, wq, weight, scale, active, temperature, bits, surrogate):
    return torch.empty_like(x), torch.empty_like(weight)


def _fq_linear_setup_context(ctx, inputs, output):
    x, wq, weight, scale, active, temperature, bits, surrogate = inputs
    ctx.save_for_backward(x, wq, weight, scale, active, temperature)
    ctx.bits, ctx.surrogate = bits, surrogate


def _fq_linear_backward(ctx, dy):
    x, wq, weight, scale, active, temperature = ctx.saved_tensors
    dx, dw = _fq_linear_backward_op(dy, x, wq, weight, scale, active, temperature, ctx.bits, ctx.surrogate)
    return dx, None, dw, None, None, None, None, None


_fq_linear_op.register_autograd(_fq_linear_backward, setup_context=_fq_linear_setup_context)


def fake_quant_linear(x: torch.Tensor, weight: torch.Tensor, *, bits: int, rule: str = "maxabs",
                      percentile: float = 99.99984, sigma: float = 12.85, surrogate: str = "ste",
                      temperature: float | torch.Tensor = 1.0, active: bool | torch.Tensor = True,
                      impl: str = "auto") -> torch.Tensor:
    """Linear layer with a fake-quantised weight: ``y = x @ fq(W)^T`` (no bias).

    Args:
        x: ``(..., in_features)`` float32 / float16 / bfloat16 activations.
        weight: ``(out_features, in_features)`` weight (usually the float32 master copy).
        bits: 2..8; codes in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``.
        rule: per-row clip rule, ``"maxabs"``, ``"percentile"`` (``percentile`` in percent) or
            ``"sigma"`` (``sigma`` standard deviations, ``correction=0``).
        surrogate: gradient of the rounding, ``"ste"`` or ``"softround"`` with ``temperature``.
        temperature: soft-round temperature, finite and ``> 0`` (float or one-element tensor, checked
            alike; a tensor is read only for ``softround`` and not while ``torch.compile`` traces).
        active: when false (bool or one-element bool tensor) the op is a plain linear.
        impl: ``"auto"`` | ``"triton"`` | ``"torch"`` (see ``triton_kernels._dispatch``).

    Returns ``(..., out_features)`` in ``x.dtype``, or in the autocast dtype under autocast (as
    ``F.linear`` does; ``dx`` comes back in ``x.dtype``). Forward is the hard quantiser of the module
    docstring, bit-identical to ``pgolf.quant.rtn`` export; ``dx = dy @ fq(W)``; ``dW = g(W) * (dy^T x)``
    with ``g`` zero on clipped weights and 1 (STE) or the soft-round slope elsewhere. Scales get
    no gradient.

    The Triton path launches, per forward, one kernel that computes the row scales and writes
    ``fq(W)`` in the matmul dtype (``out x in`` elements: 2 MiB in bf16 for 2048 x 512; never a float32
    copy unless the matmul runs in float32), then ``x @ fq(W)^T`` as one ``torch.mm`` (cuBLAS on a GPU); the
    backward computes ``dx = dy @ fq(W)`` with ``torch.mm`` on the saved ``fq(W)`` and ``dW`` in one
    Triton GEMM whose epilogue applies ``g``. Every launch is a ``torch.library`` custom op, so the
    Triton path also runs inside ``torch.compile(fullgraph=True)``.
    """
    qmax_for(bits)
    check_rule(rule, percentile, sigma)
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    check_temperature(temperature, surrogate)
    check_weight(weight)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but weight is {tuple(weight.shape)} (out, in)")
    if resolve_impl(impl, x, weight) == "torch":
        w_eff = fake_quant_weight(weight, bits=bits, rule=rule, percentile=percentile, sigma=sigma,
                                  surrogate=surrogate, temperature=temperature, active=active)
        return F.linear(x, w_eff.to(x.dtype))
    dev = weight.device
    if x.device != dev:
        raise ValueError(f"x is on {x.device} but weight is on {dev}")
    always_on = active is True  # a Python True: fq(W) needs no flag tensor, and its cache key stays the same
    active = _flag_tensor(active, torch.bool, dev, "active")
    temperature = _flag_tensor(temperature, torch.float32, dev, "temperature")
    weight = weight.contiguous()
    dtype = _matmul_dtype(x)
    # wq and scale are saved for the backward (dx = dy fq(W)), so caching is safe compiled or not
    scale, wq = _fq_weight_op(weight.detach(), None if always_on else active, bits, rule, float(percentile),
                              float(sigma), dtype, "triton", _cacheable(weight, compiled_ok=True))
    x2 = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()
    y = _fq_linear_op(x2, wq, weight, scale, active, temperature, bits, surrogate)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def fake_quant_weight(weight: torch.Tensor, *, bits: int, rule: str = "maxabs", percentile: float = 99.99984,
                      sigma: float = 12.85, surrogate: str = "ste", temperature: float | torch.Tensor = 1.0,
                      active: bool | torch.Tensor = True) -> torch.Tensor:
    """``where(active, fq(W), W)`` in ``W.dtype`` with the STE / soft-round gradient.

    For weights used outside a linear layer (a tied embedding: lookup and output head), where
    the linear :func:`fake_quant_linear` does not apply. ``fq(W)`` equals the exporter's
    ``dequantize(quantize(W))`` bit for bit, also under ``torch.compile`` with Inductor: it is
    computed by the reference's torch ops inside one custom op (see ``_fq_weight_op``), once per
    optimiser step in eager training (every forward when compiled, where nothing keeps it alive).
    """
    qmax_for(bits)
    check_rule(rule, percentile, sigma)
    check_weight(weight)
    check_temperature(temperature, surrogate)
    scale, fq_w = _fq_weight_op(weight.detach(), None, bits, rule, float(percentile), float(sigma), weight.dtype,
                                "torch", _cacheable(weight, compiled_ok=False))
    return with_fake_quant_grad(weight, fq_w, scale, bits=bits, surrogate=surrogate, temperature=temperature,
                                active=active)


def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in: the autocast dtype where autocast is on for ``x``'s
    device (so QAT under bf16 autocast multiplies bf16, even when the residual stream is float32),
    else ``x.dtype``."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _flag_tensor(value: bool | float | torch.Tensor, dtype: torch.dtype, device: torch.device,
                 name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        return torch.full((), value, dtype=dtype, device=device)
    _check_flag(value, name, device)
    return value.reshape(())
