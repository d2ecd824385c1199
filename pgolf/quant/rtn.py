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
from pgolf.quant.plan import tensor_bits, tensor_sigma
from pgolf.quant.qtensor import QTensor
from triton_kernels.fake_quant import quantize_codes, row_scales


def quantize_tensor(w: torch.Tensor, *, bits: int, rule: str, percentile: float, sigma: float,
                    impl: str = "auto", hessian: torch.Tensor | None = None, gptq: dict | None = None) -> QTensor:
    """Quantise a 2-D float tensor per row; codes and scale end up on the CPU.

    ``impl`` selects how the scales are reduced (Triton on CUDA by default); every path gives the
    same scales as the QAT forward, see :func:`triton_kernels.fake_quant.row_scales`. With a
    ``hessian`` the codes come from GPTQ (:func:`pgolf.quant.gptq.gptq_codes`, keyword arguments
    ``gptq``) on those same scales, else from rounding to nearest.
    """
    w = w.detach()
    scale = row_scales(w, bits=bits, rule=rule, percentile=percentile, sigma=sigma, impl=impl)
    if hessian is None:
        codes = quantize_codes(w, scale, bits)
    else:
        from pgolf.quant.gptq import gptq_codes  # GPTQ only (pgolf submit leaves it out)

        codes = gptq_codes(w, hessian, scale.cpu(), bits, **(gptq or {}))
    return QTensor(codes=codes.cpu(), scale=scale.cpu(), bits=bits, shape=tuple(w.shape), dtype=w.dtype)


def quantize_state_dict(state_dict: Mapping[str, torch.Tensor], qcfg: QuantConfig, roles: Mapping[str, str], *,
                        hessians: Mapping[str, torch.Tensor] | None = None, report: dict[str, str] | None = None,
                        keep_float_dtype: torch.dtype = torch.float32,
                        impl: str = "auto") -> dict[str, QTensor | torch.Tensor]:
    """Quantise a model's state dict by the plan (``roles``: :func:`pgolf.model.roles.parameter_roles`)
    for the artifact writer.

    Returns, in ``state_dict`` order, a :class:`QTensor` for each quantised matrix, the float
    tensor cast to ``keep_float_dtype`` for each float tensor kept, and every other tensor as is;
    all on the CPU. Scale rule and its parameters come from ``qcfg``. A matrix with an entry in
    ``hessians`` is rounded by GPTQ (``qcfg.gptq_*`` settings); when its Hessian is unusable it falls
    back to rounding to nearest. ``report`` (when given) gets ``{name: "rtn" | "gptq" | "rtn (...)"}``
    for every quantised matrix. With ``qcfg.lqer_top_k > 0`` the largest errors get a low-rank
    correction (:func:`pgolf.quant.lqer.apply_lqer`).
    """
    out: dict[str, QTensor | torch.Tensor] = {}
    gptq = dict(block=qcfg.gptq_block, damp=qcfg.gptq_damp, act_order=qcfg.gptq_act_order)
    report = {} if report is None else report
    for name, t in state_dict.items():
        bits = tensor_bits(name, t, qcfg, roles.get(name))
        if bits:
            kwargs = dict(bits=bits, rule=qcfg.scale_rule, percentile=qcfg.clip_percentile,
                          sigma=tensor_sigma(name, qcfg), impl=impl)
            hessian = None if hessians is None else hessians.get(name)
            report[name] = "rtn"
            if hessian is not None:
                from pgolf.quant.gptq import GPTQError

                try:
                    out[name] = quantize_tensor(t, hessian=hessian, gptq=gptq, **kwargs)
                    report[name] = "gptq"
                    continue
                except GPTQError as e:
                    report[name] = f"rtn (GPTQ fallback: {e})"
            out[name] = quantize_tensor(t, **kwargs)
        elif t.is_floating_point():
            out[name] = t.detach().to("cpu", keep_float_dtype)
        else:
            out[name] = t.detach().cpu()
    if qcfg.lqer_top_k > 0:
        from pgolf.quant.lqer import apply_lqer  # LQER only (pgolf submit leaves it out)

        apply_lqer(out, state_dict, top_k=qcfg.lqer_top_k, rank=qcfg.lqer_rank)
    return out


def dequantize_state_dict(entries: Mapping[str, QTensor | torch.Tensor],
                          reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`quantize_state_dict`: ``QTensor.dequantize()`` for matrices, tensors as stored.

    With ``reference`` (e.g. ``model.state_dict()``) float tensors are cast back to its dtypes. Low-rank
    corrections (``<name>.lqer_a`` / ``.lqer_b``) are added to their matrix and do not appear in the result.
    """
    out = {}
    entries = dict(entries)
    corrected = [n[: -len(".lqer_a")] for n in entries if n.endswith(".lqer_a")]
    corrections = {}
    if corrected:
        from pgolf.quant.lqer import lqer_correction

        corrections = {name: lqer_correction(entries.pop(f"{name}.lqer_a"), entries.pop(f"{name}.lqer_b"))
                       for name in corrected}
    for name, e in entries.items():
        t = e.dequantize() if isinstance(e, QTensor) else e
        if name in corrections:
            t = (t.float() + corrections[name]).to(t.dtype)
        if reference is not None and name in reference and t.is_floating_point():
            t = t.to(reference[name].dtype)
        out[name] = t
    return out
