"""Round-to-nearest quantisation of a state dict (the exporter's quantiser) and its inverse.

The quantiser's math lives once, in :mod:`triton_kernels.fake_quant`; which tensor gets which bits
comes from :func:`pgolf.quant.plan.plan`. Tensors kept float are stored in float32 by default
(``keep_float_dtype``): lossless, so the exported model equals the trained one exactly outside the
quantised matrices. Float16 halves their bytes (the official exporter stores non-control small
tensors so) at the price of that exactness.
"""
from __future__ import annotations

from typing import Mapping

import torch

from pgolf.config import QuantConfig
from pgolf.quant.plan import tensor_bits
from pgolf.quant.qtensor import QTensor
from triton_kernels.fake_quant import quantize_codes, row_scales


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


def quantize_state_dict(state_dict: Mapping[str, torch.Tensor], qcfg: QuantConfig, roles: Mapping[str, str], *,
                        keep_float_dtype: torch.dtype = torch.float32,
                        impl: str = "auto") -> dict[str, QTensor | torch.Tensor]:
    """Quantise a model's state dict by the plan (``roles``: :func:`pgolf.model.roles.parameter_roles`)
    for the artifact writer.

    Returns, in ``state_dict`` order, a :class:`QTensor` for each quantised matrix, the float
    tensor cast to ``keep_float_dtype`` for each float tensor kept, and every other tensor as is;
    all on the CPU. Scale rule and its parameters come from ``qcfg``.
    """
    out: dict[str, QTensor | torch.Tensor] = {}
    for name, t in state_dict.items():
        bits = tensor_bits(name, t, qcfg, roles.get(name))
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
