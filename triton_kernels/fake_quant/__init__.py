"""Symmetric per-row fake quantisation and a fake-quant linear (``y = x @ fq(W)^T``) for QAT.

This module is the single home of the quantiser's math: the exporter (``pgolf.quant.rtn``) and
quantisation-aware training (``pgolf.quant.qat`` / ``CastedLinear``) both call it, so a trained model and
its exported artifact see bit-identical weights.

The quantiser (``b`` bits, ``qmax = 2**(b-1) - 1``; int5 -> 15, int6 -> 31, int8 -> 127)
--------------------------------------------------------------------------------------
For a weight ``W`` of shape ``(rows, cols)`` (one scale per row = per output channel):

1. ``clip[r]`` by rule (all float32 unless said otherwise):

   * ``maxabs``:     ``max_c |W[r, c]|`` (exact);
   * ``percentile``: ``torch.quantile(|W[r]|, percentile / 100)`` (linear interpolation, as the
     official int8 exporter with 99.99984);
   * ``sigma``:      ``fl32(std64(W[r])) * fl32(k)``, where ``std64`` is the population standard
     deviation (``correction=0``) reduced in float64 and rounded once to float32, so the Triton
     reduction and ``torch.std`` agree bit-for-bit whatever their summation order.

2. ``scale[r] = fp16(clamp(clip[r] / qmax, MIN_SCALE, FP16_MAX))`` (float32 division, then one
   round-to-nearest-even to float16: the stored scale *is* the scale used everywhere).
   ``MIN_SCALE = 2**-14`` (the smallest normal float16) for every bit width: it guards all-zero
   rows (their codes are 0) and keeps the float16 scale at full precision. The official int8
   exporter clamps at ``1/127`` instead, i.e. it never lets the clip fall below 1.0, which would
   flatten rows of small weights (typical |w| ~ 0.02) onto a few codes; we do not copy that.

3. ``codes = clamp(rne(W / s), -qmax, qmax)`` with ``s = scale.float()`` and ``rne`` round half to
   even (what ``torch.round`` does), int8. The kernels compute the same thing: an IEEE float32
   division (``tl.math.div_rn``), a clamp to ``[-qmax, qmax]`` (equivalent to clamping after rounding
   because ``qmax`` is an integer) and the exact float32 trick ``(x + 1.5*2**23) - 1.5*2**23``,
   which rounds half to even for ``|x| < 2**22`` (libdevice ``rint`` does not run in the
   interpreter, the trick does, identically, on both).

4. ``fq(W) = codes * s`` in float32: exactly ``QTensor.dequantize()``.

A row holding a NaN or an infinity gets a NaN scale, so its whole ``fq(W)`` row is NaN on every
path (an infinity would otherwise clamp to a finite garbage scale): non-finite weights are never
hidden behind finite outputs. The check is elementwise on the device, no host sync, so it also
runs under ``torch.compile``; the exporter refuses such weights outright.

Gradients (scales are treated as constants: no gradient flows into ``s``)
--------------------------------------------------------------------------
With ``x = W / s`` the weight is *clipped* where the clamp changed the rounded code,
``|rne(x)| > qmax`` (equivalently ``|x| >= qmax + 1/2``, since ``qmax`` is odd and ties go to even).
Clipped weights get zero gradient. Elsewhere ``dfq/dW`` is

* ``ste``:       1 (straight-through estimator);
* ``softround``: the derivative of the soft rounding of Agustsson & Theis (2020) with ``a = 1/T``,
  ``soft(x) = floor(x) + 1/2 + tanh(a r) / (2 tanh(a/2))``, ``r = x - floor(x) - 1/2``, i.e.
  ``d soft/dx = a sech^2(a r) / (2 tanh(a/2))``. Its mean over one step is exactly 1; ``T -> inf``
  gives the STE (identity), ``T -> 0`` concentrates the gradient at the rounding boundaries
  (hard rounding). Only the gradient uses it: the forward value stays the hard ``fq(W)``, so
  training and export see the same weights.

With ``active`` false the op is a plain linear: ``W`` passes unquantised with gradient 1 (the
scales are still computed; the switch is a tensor so ``torch.compile`` cannot constant-fold it).

Dtypes: ``fq(W)`` is computed in float32, cast to ``W.dtype`` (the reference) and then to
``x.dtype`` for the matmul, like ``CastedLinear`` casts its weight; ``y`` and ``dx`` have
``x.dtype``, ``dW`` has ``W.dtype``; the dW kernel accumulates in float32.

Kernels (Triton path): the row scales and ``fq(W)`` in ``x.dtype`` come from one launch of
``_fq_weight_kernel``; ``y`` and ``dx`` are ``torch.mm`` on that copy; ``dW`` is one Triton GEMM with
``g`` in its epilogue. ``triton_kernels/README.md`` says why the weight is not quantised inside
the matmul.
"""
from .ops import (dw_tile_config, fake_quant_linear, fake_quant_weight, fq_linear_dw_triton, fq_weight_triton, row_scales,
                  weight_block)
from .reference import (FP16_MAX, MIN_SCALE, RULES, SURROGATES, fake_quant_grad_reference, fake_quant_linear_reference,
                        fake_quant_reference, fake_quant_weight_reference, qmax_for, quantize_codes,
                        row_scales_reference)
from .step_cache import STEP_CACHE

__all__ = ["FP16_MAX", "MIN_SCALE", "RULES", "SURROGATES", "dw_tile_config", "fake_quant_grad_reference",
           "fake_quant_linear", "fake_quant_linear_reference", "fake_quant_reference", "fake_quant_weight",
           "fake_quant_weight_reference", "STEP_CACHE",
           "fq_linear_dw_triton", "fq_weight_triton", "qmax_for", "quantize_codes", "row_scales",
           "row_scales_reference", "weight_block"]
