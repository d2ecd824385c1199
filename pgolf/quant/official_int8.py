"""The official ``train_gpt.py`` int8 export format (``int8_clean_per_row_v1``), reproduced exactly.

For every tensor ``t`` of a state dict (``roles`` as :func:`pgolf.model.roles.parameter_roles`):

* not floating point: stored as it is;
* ``numel <= 65,536``: kept float -- ``control`` parameters (gains, scales, mixes, skip weights) as
  float32, other float32/bf16 tensors as float16 (their dtype recorded in
  ``passthrough_orig_dtypes``), other float dtypes as they are;
* a larger matrix (``w = t.float()``, rows ``r``): ``c_r = quantile(|w_r|, 0.9999984)`` (linear
  interpolation), ``s_r = max(c_r / 127, 1/127)`` in float32,
  ``q = clamp(round(clamp(w, -c_r, c_r) / s_r), -127, 127)`` as int8, the scales stored as float16
  (divided by the float32 ``s_r``; dequantised with the float16-rounded one);
* any other large tensor: one scale ``s = c / 127`` (1 when ``c = 0``) with ``c`` the quantile of
  all ``|w|``, stored as a float32 scalar.

Note the floor: a row whose clip value is below 1 gets ``s_r = 1/127``, so a small-init weight
becomes codes in a few steps of ``1/127`` (mostly 0): coarse, but highly compressible.
:func:`quantize_official_int8` returns the object the official script passes to ``torch.save``
(same keys, order and tensors), :func:`dequantize_official_int8` its inverse.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from pgolf.model.roles import CONTROL

FORMAT = "int8_clean_per_row_v1"
KEEP_FLOAT_MAX_NUMEL = 65_536
CLIP_QUANTILE = 99.99984 / 100.0
QMAX = 127


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _kept_float(name: str, t: torch.Tensor, role: str | None, orig_dtypes: dict[str, str]) -> torch.Tensor:
    if role == CONTROL:
        return t.float().contiguous()
    if t.dtype in (torch.float32, torch.bfloat16):
        orig_dtypes[name] = _dtype_name(t.dtype)
        return t.to(torch.float16).contiguous()
    return t


def _quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 codes, scale)``: per row (float16 scales) for a matrix, one float32 scalar otherwise."""
    w = t.float()
    if w.ndim == 2:
        clip = torch.quantile(w.abs(), CLIP_QUANTILE, dim=1) if w.numel() else torch.empty(w.shape[0])
        scale = (clip / float(QMAX)).clamp_min(1.0 / QMAX)
        clipped = torch.clamp(w, min=-clip[:, None], max=clip[:, None])
        codes = torch.clamp(torch.round(clipped / scale[:, None]), -QMAX, QMAX).to(torch.int8).contiguous()
        return codes, scale.to(torch.float16).contiguous()
    clip = float(torch.quantile(w.abs().flatten(), CLIP_QUANTILE).item()) if w.numel() else 0.0
    scale = torch.tensor(clip / QMAX if clip > 0 else 1.0, dtype=torch.float32)
    codes = torch.clamp(torch.round(torch.clamp(w, -clip, clip) / scale), -QMAX, QMAX).to(torch.int8).contiguous()
    return codes, scale


def quantize_official_int8(state_dict: Mapping[str, torch.Tensor], roles: Mapping[str, str]) -> dict[str, Any]:
    """The official export object of ``state_dict`` (see the module docstring)."""
    quantized: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    passthrough: dict[str, torch.Tensor] = {}
    orig_dtypes: dict[str, str] = {}
    qmeta: dict[str, dict[str, Any]] = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        if not t.is_floating_point():
            passthrough[name] = t
        elif t.numel() <= KEEP_FLOAT_MAX_NUMEL:
            passthrough[name] = _kept_float(name, t, roles.get(name), orig_dtypes)
        else:
            quantized[name], scales[name] = _quantize(t)
            if scales[name].ndim > 0:
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            dtypes[name] = _dtype_name(t.dtype)
    obj: dict[str, Any] = {"__quant_format__": FORMAT, "quantized": quantized, "scales": scales, "dtypes": dtypes,
                           "passthrough": passthrough}
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


def dequantize_official_int8(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict an official export object stands for: ``codes * scale`` (the scale widened
    to float32) in the recorded dtype, kept tensors back in their original dtype."""
    if obj.get("__quant_format__") != FORMAT:
        raise ValueError(f"not an official int8 export: format {obj.get('__quant_format__')!r}, expected {FORMAT!r}")
    out: dict[str, torch.Tensor] = {}
    for name, codes in obj["quantized"].items():
        scale = obj["scales"][name].to(torch.float32)
        if scale.ndim > 0:
            scale = scale.view(codes.shape[0], *([1] * (codes.ndim - 1)))
        else:
            scale = float(scale.item())
        out[name] = (codes.float() * scale).to(getattr(torch, obj["dtypes"][name])).contiguous()
    orig = obj.get("passthrough_orig_dtypes", {})
    for name, t in obj["passthrough"].items():
        t = t.detach().to("cpu").contiguous()
        out[name] = t.to(getattr(torch, orig[name])).contiguous() if name in orig else t
    return out
