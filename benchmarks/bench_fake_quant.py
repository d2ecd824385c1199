"""Fake-quant linear, forward + backward: ``y = x @ fq(W)^T``, ``dx``, ``dW``.

Contenders: plain ``F.linear`` (the floor: what QAT costs on top of it), the pure-torch fake quant
eager and under ``torch.compile``, and the pgolf Triton path (one weight-quantising kernel, the forward
and dx GEMMs on its output, a dW GEMM with the clip mask in its epilogue). Sizes: ``full`` is 65,536 tokens
x the baseline-family matrix shapes in bf16 with float32 master weights (GPU); ``tiny`` is a CPU
smoke run in float32.

Each call is one QAT step's forward and backward, the quantisation of ``W`` included: the eager and
Triton contenders empty :data:`triton_kernels.fake_quant.STEP_CACHE` first, which would otherwise
hand back the ``fq(W)`` of the previous call on the same, unchanged weight (the reuse that
gradient accumulation gets between two optimiser steps; the compiled reference has no cache).

Every contender must return the same ``(y, dx, dW)``, the plain linear included: the weights are
generated already on the int6 grid (``W = fq(W0)``, a fixed point of ``fq`` under ``maxabs``) and
the surrogate is the STE, which clips nothing under ``maxabs``; so all four compute the same math
and ``check`` compares them with one tolerance.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from benchmarks.harness import Benchmark, Case, Contender
from triton_kernels._dispatch import triton_unavailable
from triton_kernels.fake_quant import (STEP_CACHE, fake_quant_linear, fake_quant_linear_reference,
                                       fake_quant_reference, row_scales_reference)

BITS = 6
FULL_TOKENS = 65_536
FULL_SHAPES = [(512, 512), (512, 256), (512, 1024), (1024, 512), (512, 2048), (2048, 512)]  # (K in, N out)
TINY_TOKENS = 64
TINY_SHAPES = [(48, 40), (64, 32)]


def _make(tokens: int, k: int, n: int, dtype: torch.dtype):
    def make_inputs(device: torch.device, seed: int) -> tuple:
        g = torch.Generator(device="cpu").manual_seed(seed)
        w0 = torch.randn(n, k, generator=g) / k ** 0.5
        w = fake_quant_reference(w0, row_scales_reference(w0, bits=BITS), BITS)
        x = torch.randn(tokens, k, generator=g).to(device, dtype).requires_grad_()
        dy = torch.randn(tokens, n, generator=g).to(device, dtype)
        return x, w.to(device).requires_grad_(), dy
    return make_inputs


def _case(tokens: int, k: int, n: int, dtype: torch.dtype) -> Case:
    e = torch.finfo(dtype).bits // 8
    return Case(name=f"M{tokens}_K{k}_N{n}_{str(dtype).removeprefix('torch.')}", make_inputs=_make(tokens, k, n, dtype),
                flops=6.0 * tokens * k * n,  # fwd 2MNK + dx 2MNK + dW 2MNK
                bytes=e * (2 * tokens * k + 2 * tokens * n) + 2 * 4 * n * k)  # x, dy in; y, dx out; W in, dW out


def cases(size: str) -> list[Case]:
    if size == "full":
        return [_case(FULL_TOKENS, k, n, torch.bfloat16) for k, n in FULL_SHAPES]
    if size == "tiny":
        return [_case(TINY_TOKENS, k, n, torch.float32) for k, n in TINY_SHAPES]
    raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")


def _fwd_bwd(forward, x, w, dy):
    y = forward(x, w)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    return y, dx, dw


def plain_linear(x, w, dy):
    return _fwd_bwd(lambda a, b: F.linear(a, b.to(a.dtype)), x, w, dy)


def torch_eager(x, w, dy):
    STEP_CACHE.clear()
    return _fwd_bwd(functools.partial(fake_quant_linear, bits=BITS, impl="torch"), x, w, dy)


@functools.cache
def _compiled():
    return torch.compile(functools.partial(fake_quant_linear_reference, bits=BITS), fullgraph=True)


def torch_compiled(x, w, dy):
    return _fwd_bwd(_compiled(), x, w, dy)


def pgolf_triton(x, w, dy):
    STEP_CACHE.clear()
    return _fwd_bwd(functools.partial(fake_quant_linear, bits=BITS, impl="triton"), x, w, dy)


def reference(x, w, dy):
    """Float32 reference of the same fake-quant linear."""
    xf, dyf = x.detach().float().requires_grad_(), dy.float()
    wf = w.detach().float().requires_grad_()
    return _fwd_bwd(functools.partial(fake_quant_linear_reference, bits=BITS), xf, wf, dyf)


def check(out, ref) -> str | None:
    """Max error relative to max |ref| per output, with the tolerance of the matmul dtype (``y``'s):
    a bf16 case keeps bf16 rounding in ``dW`` too, although ``dW`` comes back float32."""
    tol = 1e-4 if out[0].dtype == torch.float32 else 2e-2
    for name, a, b in zip(("y", "dx", "dW"), out, ref):
        err = ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
        if not err < tol:
            return f"{name}: max error {err:.3g} relative to max |ref|, tolerance {tol}"
    return None


BENCHMARK = Benchmark(
    name="fake_quant",
    cases=cases,
    contenders=[
        Contender("F.linear", plain_linear),
        Contender("torch eager fq", torch_eager),
        Contender("torch.compile fq", torch_compiled),
        Contender("pgolf triton", pgolf_triton, unavailable=triton_unavailable),
    ],
    reference=reference,
    check=check,
    baseline="F.linear",
)
