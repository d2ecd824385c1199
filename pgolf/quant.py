"""Export quantisation: which tensor gets which bits, and the state dict <-> QTensor round trip.

The quantiser's math lives once, in :mod:`triton_kernels.fake_quant`; this module only decides
*what* to quantise. :func:`plan` is the single source of that decision and is used both here
(export) and by :func:`pgolf.qat.enable_qat` (training), so both agree tensor by tensor.

Policy (from :class:`pgolf.config.QuantConfig`):

* non-float tensors pass through untouched;
* a float tensor is a candidate only if it is 2-D, has more than ``keep_float_max_numel``
  elements and is not a control tensor (:data:`pgolf.model.CONTROL_PATTERNS`: gains, scales,
  residual mixes and skip weights always stay float, as in the official exporter);
* a candidate takes the bits of the *first* ``policy`` pattern that is a substring of its name
  (``"mlp=5,attn=6,tok_emb=8"``), else ``bits``; a policy value of 0 keeps it float.

Tensors kept float are stored in float32 by default (``keep_float_dtype``): lossless, so the
exported model equals the trained one exactly outside the quantised matrices. Float16 halves
their bytes (the official exporter stores non-control small tensors so) at the price of that
exactness.
"""
from __future__ import annotations

from typing import Mapping

import torch

from pgolf.config import QuantConfig, parse_policy
from pgolf.model import CONTROL_PATTERNS
from pgolf.qtensor import QTensor
from triton_kernels.fake_quant import quantize_codes, row_scales


def tensor_bits(name: str, tensor: torch.Tensor, qcfg: QuantConfig) -> int:
    """Bits for one named tensor under ``qcfg`` (0 = keep float); see the module docstring."""
    if not tensor.is_floating_point() or tensor.ndim != 2 or tensor.numel() <= qcfg.keep_float_max_numel:
        return 0
    if any(pattern in name for pattern in CONTROL_PATTERNS):
        return 0
    for pattern, bits in parse_policy(qcfg.policy):
        if pattern in name:
            return bits
    return qcfg.bits


def plan(state_dict: Mapping[str, torch.Tensor], qcfg: QuantConfig) -> dict[str, int]:
    """``{name: bits}`` for every tensor of ``state_dict`` (0 = stays float / passes through)."""
    return {name: tensor_bits(name, t, qcfg) for name, t in state_dict.items()}


def quantize_tensor(w: torch.Tensor, *, bits: int, rule: str, percentile: float, sigma: float,
                    impl: str = "auto") -> QTensor:
    """Quantise a 2-D float tensor per row; codes and scale end up on the CPU.

    ``impl`` selects how the scales are reduced (Triton on CUDA by default); every path gives the
    same scales as the QAT forward, see :func:`triton_kernels.fake_quant.row_scales`.
    """
    w = w.detach()
    scale = row_scales(w, bits=bits, rule=rule, percentile=percentile, sigma=sigma, impl=impl)
    codes = quantize_codes(w, scale, bits)
    return QTensor(codes=codes.cpu(), scale=scale.cpu(), bits=bits, shape=tuple(w.shape), dtype=w.dtype)


def quantize_state_dict(state_dict: Mapping[str, torch.Tensor], qcfg: QuantConfig, *,
                        keep_float_dtype: torch.dtype = torch.float32,
                        impl: str = "auto") -> dict[str, QTensor | torch.Tensor]:
    """Quantise a model's state dict by :func:`plan` for the artifact writer.

    Returns, in ``state_dict`` order, a :class:`QTensor` for each quantised matrix, the float
    tensor cast to ``keep_float_dtype`` for each float tensor kept, and every other tensor as is;
    all on the CPU. Scale rule and its parameters come from ``qcfg``.
    """
    out: dict[str, QTensor | torch.Tensor] = {}
    for name, t in state_dict.items():
        bits = tensor_bits(name, t, qcfg)
        if bits:
            out[name] = quantize_tensor(t, bits=bits, rule=qcfg.scale_rule, percentile=qcfg.clip_percentile,
                                        sigma=qcfg.clip_sigma, impl=impl)
        elif t.is_floating_point():
            out[name] = t.detach().to("cpu", keep_float_dtype)
        else:
            out[name] = t.detach().cpu()
    return out


def dequantize_state_dict(entries: Mapping[str, QTensor | torch.Tensor],
                          reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`quantize_state_dict`: ``QTensor.dequantize()`` for matrices, tensors as stored.

    With ``reference`` (e.g. ``model.state_dict()``) float tensors are cast back to its dtypes.
    """
    out = {}
    for name, e in entries.items():
        t = e.dequantize() if isinstance(e, QTensor) else e
        if reference is not None and name in reference and t.is_floating_point():
            t = t.to(reference[name].dtype)
        out[name] = t
    return out
