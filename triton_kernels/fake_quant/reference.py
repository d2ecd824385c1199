"""Pure-torch reference of the fake quantiser: the oracle of the kernels and the CPU path.

No Triton import. The math is in the package docstring (:mod:`triton_kernels.fake_quant`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

RULES = ("maxabs", "percentile", "sigma")
SURROGATES = ("ste", "softround")
MIN_SCALE = 2.0 ** -14
FP16_MAX = 65504.0
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def qmax_for(bits: int) -> int:
    """Largest code of the symmetric ``bits``-bit grid: ``2**(bits-1) - 1`` (bits in 2..8)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    return 2 ** (bits - 1) - 1


def check_rule(rule: str, percentile: float, sigma: float) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "percentile" and not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if rule == "sigma" and not sigma > 0.0:
        raise ValueError(f"sigma must be > 0, got {sigma}")


def check_temperature(temperature: float | torch.Tensor, surrogate: str) -> None:
    """The soft-round temperature must be finite and > 0, as a float or as a one-element tensor.

    A tensor is read only where its value matters (``softround``) and only outside
    ``torch.compile`` tracing (reading it is a host sync; a compiled graph cannot branch on it).
    """
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a float or a one-element tensor, got shape "
                             f"{tuple(temperature.shape)}")
        if surrogate != "softround" or torch.compiler.is_compiling():
            return
        value = float(temperature.detach().reshape(()).float().cpu())
    else:
        value = float(temperature)
    if not 0.0 < value < float("inf"):
        raise ValueError(f"temperature must be finite and > 0, got {value}")


def check_weight(w: torch.Tensor, what: str = "weight") -> None:
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D tensor (rows, cols), got shape {tuple(w.shape)}")
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} must be float32, float16 or bfloat16, got {w.dtype}")


def _finish_scale(clip: torch.Tensor, qmax: int, finite_rows: torch.Tensor) -> torch.Tensor:
    scale = (clip / qmax).clamp(MIN_SCALE, FP16_MAX)
    return torch.where(finite_rows, scale, torch.nan).to(torch.float16)


def row_scales_reference(w: torch.Tensor, *, bits: int, rule: str = "maxabs",
                         percentile: float = 99.99984, sigma: float = 12.85) -> torch.Tensor:
    """Per-row float16 scales of ``w`` (rows, cols) by ``rule``; see the module docstring."""
    qmax = qmax_for(bits)
    check_rule(rule, percentile, sigma)
    check_weight(w)
    w32 = w.detach().float()
    if rule == "maxabs":
        clip = w32.abs().amax(dim=1)
    elif rule == "percentile":
        clip = torch.quantile(w32.abs(), percentile / 100.0, dim=1)
    else:
        clip = w32.double().std(dim=1, correction=0).float() * sigma
    return _finish_scale(clip, qmax, torch.isfinite(w32).all(dim=1))



def quantize_codes(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``clamp(round_half_even(w / scale.float()), -qmax, qmax)`` as int8, ``w`` (rows, cols)."""
    qmax = qmax_for(bits)
    x = w.detach().float() / scale.float()[:, None]
    return torch.round(x).clamp(-qmax, qmax).to(torch.int8)


def fake_quant_reference(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``quantize_codes(w, scale, bits) * scale`` in float32: quantise then dequantise, exactly."""
    return quantize_codes(w, scale, bits).float() * scale.float()[:, None]


def fake_quant_grad_reference(w: torch.Tensor, scale: torch.Tensor, bits: int, *, surrogate: str = "ste",
                              temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``d fq(w) / d w`` elementwise (float32): 0 where clipped, else 1 (STE) or the soft-round slope."""
    qmax = qmax_for(bits)
    x = w.detach().float() / scale.float()[:, None]
    passes = torch.round(x).abs() <= qmax
    if surrogate == "ste":
        return passes.float()
    if surrogate != "softround":
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    a = 1.0 / torch.as_tensor(temperature, dtype=torch.float32, device=w.device)
    r = x - torch.floor(x) - 0.5
    slope = a * (1.0 - torch.tanh(a * r) ** 2) / (2.0 * torch.tanh(a / 2.0))
    return torch.where(passes, slope, 0.0)


class _FakeQuantWeight(torch.autograd.Function):
    """``fq(w)`` (given, computed in ``w.dtype``) with the STE / soft-round gradient."""

    @staticmethod
    def forward(ctx, w, fq_w, scale, bits, surrogate, temperature):
        ctx.save_for_backward(w, scale, temperature)
        ctx.bits, ctx.surrogate = bits, surrogate
        return fq_w.view_as(fq_w)

    @staticmethod
    def backward(ctx, grad):
        w, scale, temperature = ctx.saved_tensors
        g = fake_quant_grad_reference(w, scale, ctx.bits, surrogate=ctx.surrogate, temperature=temperature)
        return (grad.float() * g).to(w.dtype), None, None, None, None, None


def with_fake_quant_grad(weight: torch.Tensor, fq_w: torch.Tensor, scale: torch.Tensor, *, bits: int,
                         surrogate: str, temperature: float | torch.Tensor,
                         active: bool | torch.Tensor) -> torch.Tensor:
    """``where(active, fq_w, W)`` whose gradient is the quantiser's (``fq_w = fq(W)`` in ``W.dtype``,
    ``scale`` its row scales, both computed by the caller)."""
    check_temperature(temperature, surrogate)
    temperature = torch.as_tensor(temperature, dtype=torch.float32, device=weight.device)
    w_eff = _FakeQuantWeight.apply(weight, fq_w, scale, bits, surrogate, temperature)
    if isinstance(active, torch.Tensor):
        return torch.where(active, w_eff, weight)
    return w_eff if active else weight


def fake_quant_weight_reference(weight: torch.Tensor, *, bits: int, rule: str = "maxabs",
                                percentile: float = 99.99984, sigma: float = 12.85, surrogate: str = "ste",
                                temperature: float | torch.Tensor = 1.0,
                                active: bool | torch.Tensor = True) -> torch.Tensor:
    """``where(active, fq(W), W)`` in ``W.dtype`` with the STE / soft-round gradient, recomputed in
    plain torch ops on every call (the oracle of :func:`triton_kernels.fake_quant.fake_quant_weight`)."""
    check_temperature(temperature, surrogate)
    scale = row_scales_reference(weight, bits=bits, rule=rule, percentile=percentile, sigma=sigma)
    return with_fake_quant_grad(weight, fake_quant_reference(weight, scale, bits).to(weight.dtype), scale, bits=bits,
                                surrogate=surrogate, temperature=temperature, active=active)


def fake_quant_linear_reference(x: torch.Tensor, weight: torch.Tensor, *, bits: int, rule: str = "maxabs",
                                percentile: float = 99.99984, sigma: float = 12.85, surrogate: str = "ste",
                                temperature: float | torch.Tensor = 1.0,
                                active: bool | torch.Tensor = True) -> torch.Tensor:
    """Pure-torch ``F.linear(x, where(active, fq(W), W).to(x.dtype))`` with the module's gradients."""
    w_eff = fake_quant_weight_reference(weight, bits=bits, rule=rule, percentile=percentile, sigma=sigma,
                              surrogate=surrogate, temperature=temperature, active=active)
    return F.linear(x, w_eff.to(x.dtype))
