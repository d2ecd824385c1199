"""Exploration: the int5 fake-quant forward on FP8 (e4m3) tensor cores against the bf16 forward.

int5 codes -15..15 are exact in e4m3 (its 3 mantissa bits hold every integer up to 16), so
``fq(W) = codes * s`` can enter an FP8 GEMM as e4m3 codes with the row scale ``s`` applied to the
float32 accumulator. Hopper's FP8 MMA takes two FP8 operands, so the activations must be FP8 too:
each token row is scaled by ``sx = max|x_row| / 448`` and rounded to e4m3::

    y = diag(sx) (x8 @ codes8^T) diag(s)        x8 = e4m3(x / sx),  codes8 = e4m3(codes)

Rounding ``x`` to e4m3 costs up to 2^-4 relative error per element: the forward is then no longer
the bf16 math QAT trains against (the weights still are exact). ``check`` therefore accepts a
relative RMS error up to :data:`TOLERANCE` against the float32 product; ``python -m
benchmarks.bench_fp8_int5`` prints the error of each contender at the real shapes (any device).

Contenders, forward only (the question is whether the forward gets faster):

* ``bf16 F.linear``: the QAT forward today, ``x @ fq(W)^T`` with ``fq(W)`` in bf16;
* ``fp8 scaled_mm``: ``x`` quantised per token in eager torch, then ``torch._scaled_mm`` with
  row-wise scales (FP8 tensor cores on Hopper);
* ``fp8 scaled_mm, compiled quant``: the same, the quantisation of ``x`` under ``torch.compile``.

Each time includes quantising ``x``, which a real step pays; ``codes8`` and ``s`` come from the
weight kernel once per step and are inputs. Sizes as ``bench_fake_quant``: ``full`` is 65,536 tokens
x the six baseline-family shapes (GPU), ``tiny`` a CPU smoke run.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from benchmarks.harness import Benchmark, Case, Contender
from benchmarks.bench_fake_quant import FULL_SHAPES, FULL_TOKENS, TINY_SHAPES, TINY_TOKENS

BITS = 5
QMAX = 2 ** (BITS - 1) - 1
E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
TOLERANCE = 0.06  # relative RMS error; e4m3 activations give ~0.02-0.03, bf16 ~0.003


def _make(tokens: int, k: int, n: int):
    def make_inputs(device: torch.device, seed: int) -> tuple:
        g = torch.Generator(device="cpu").manual_seed(seed)
        codes = torch.randint(-QMAX, QMAX + 1, (n, k), generator=g, dtype=torch.int8)
        scale = (torch.rand(n, generator=g) * 0.004 + 0.001).half().float()  # fp16-exact row scales
        x = torch.randn(tokens, k, generator=g).to(device, torch.bfloat16)
        w_bf16 = (codes.float() * scale[:, None]).to(device, torch.bfloat16)
        return x, w_bf16, codes.to(device).to(E4M3), scale.to(device)[None, :]
    return make_inputs


def _case(tokens: int, k: int, n: int) -> Case:
    return Case(name=f"M{tokens}_K{k}_N{n}_int5", make_inputs=_make(tokens, k, n), flops=2.0 * tokens * k * n,
                bytes=2 * tokens * k + n * k + 4 * n + 2 * tokens * n)  # x bf16 + codes e4m3 + scales in, y bf16 out


def cases(size: str) -> list[Case]:
    if size == "full":
        return [_case(FULL_TOKENS, k, n) for k, n in FULL_SHAPES]
    if size == "tiny":
        return [_case(TINY_TOKENS, k, n) for k, n in TINY_SHAPES]
    raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")


def quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e4m3(x / sx), sx)`` with ``sx = max|x_row| / 448`` (float32, shape ``(M, 1)``)."""
    sx = x.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / E4M3_MAX
    return (x.float() / sx).to(E4M3), sx


@functools.cache
def _compiled_quantise_rows():
    return torch.compile(quantise_rows, fullgraph=True)


def _fp8_forward(quantise, x, codes8, scale):
    x8, sx = quantise(x)
    return torch._scaled_mm(x8, codes8.t(), scale_a=sx, scale_b=scale, out_dtype=torch.bfloat16)


def bf16_linear(x, w_bf16, codes8, scale):
    return F.linear(x, w_bf16)


def fp8_scaled_mm(x, w_bf16, codes8, scale):
    return _fp8_forward(quantise_rows, x, codes8, scale)


def fp8_scaled_mm_compiled_quant(x, w_bf16, codes8, scale):
    return _fp8_forward(_compiled_quantise_rows(), x, codes8, scale)


def reference(x, w_bf16, codes8, scale):
    """Float32 ``x @ (codes * s)^T``."""
    return x.float() @ (codes8.float() * scale.t()).t()


def relative_rms_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref||_2 / ||ref||_2`` over all elements, in float64."""
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def check(out, ref) -> str | None:
    if out.dtype != torch.bfloat16 or out.shape != ref.shape:
        return f"expected a bf16 {tuple(ref.shape)} output, got {out.dtype} {tuple(out.shape)}"
    err = relative_rms_error(out, ref)
    if not err <= TOLERANCE:
        return f"relative RMS error {err:.3g} > {TOLERANCE}"
    return None


def _fp8_unavailable() -> str | None:
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no FP8 _scaled_mm"
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        return f"FP8 tensor cores need sm_89 or newer, this GPU is sm_{''.join(map(str, torch.cuda.get_device_capability()))}"
    return None


BENCHMARK = Benchmark(
    name="fp8_int5",
    cases=cases,
    contenders=[
        Contender("bf16 F.linear", bf16_linear),
        Contender("fp8 scaled_mm", fp8_scaled_mm, unavailable=_fp8_unavailable),
        Contender("fp8 scaled_mm, compiled quant", fp8_scaled_mm_compiled_quant, unavailable=_fp8_unavailable),
    ],
    reference=reference,
    check=check,
    baseline="bf16 F.linear",
)


def accuracy_table(tokens: int = 4096, device: str = "cpu") -> list[tuple[str, float, float]]:
    """``(case, bf16 error, fp8 error)``: relative RMS errors against float32 at the full shapes."""
    rows = []
    for k, n in FULL_SHAPES:
        inputs = _make(tokens, k, n)(torch.device(device), 0)
        ref = reference(*inputs)
        rows.append((f"K{k}_N{n}", relative_rms_error(bf16_linear(*inputs), ref),
                     relative_rms_error(fp8_scaled_mm(*inputs), ref)))
    return rows


if __name__ == "__main__":
    print("case          bf16 F.linear   fp8 e4m3 scaled_mm   (relative RMS error vs float32, 4096 tokens)")
    for name, bf16_err, fp8_err in accuracy_table():
        print(f"{name:<13} {bf16_err:<15.4f} {fp8_err:.4f}")
