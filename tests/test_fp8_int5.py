"""The facts the FP8 int5 exploration (benchmarks/bench_fp8_int5.py) rests on, checked on the CPU."""
import torch

from benchmarks import bench_fp8_int5 as b


def test_int5_codes_are_exact_in_e4m3_and_int6_codes_are_not():
    int5 = torch.arange(-15, 16, dtype=torch.float32)
    assert torch.equal(int5.to(b.E4M3).float(), int5)
    int6 = torch.arange(-31, 32, dtype=torch.float32)
    inexact = int6[int6.to(b.E4M3).float() != int6]
    assert inexact.numel() > 0 and inexact.abs().min() == 17  # 17 needs 4 mantissa bits


def test_per_token_e4m3_rounding_stays_within_half_an_ulp():
    x = torch.randn(64, 512) * torch.logspace(-3, 3, 64)[:, None]
    x8, sx = b.quantise_rows(x)
    assert x8.dtype == b.E4M3 and sx.shape == (64, 1)
    assert (x8.float().abs().amax(dim=1) == b.E4M3_MAX).all(), "each row's largest value maps to 448"
    back = x8.float() * sx
    normal = x.abs() >= sx * 2.0 ** -6  # e4m3 normals: relative error <= 2^-4 (3 mantissa bits)
    assert ((back - x).abs() <= 2.0 ** -4 * x.abs() + 1e-30)[normal].all()


def test_fp8_forward_matches_the_scaled_product():
    x, w_bf16, codes8, scale = b._make(96, 64, 48)(torch.device("cpu"), 3)
    ref = b.reference(x, w_bf16, codes8, scale)
    x8, sx = b.quantise_rows(x)
    exact_in_fp32 = (x8.float() * sx) @ (codes8.float() * scale.t()).t()
    out = b.fp8_scaled_mm(x, w_bf16, codes8, scale)
    assert b.check(out, ref) is None and b.check(b.bf16_linear(x, w_bf16, codes8, scale), ref) is None
    assert b.relative_rms_error(out, exact_in_fp32) < 4e-3  # only the bf16 output rounding left
    assert b.relative_rms_error(out, ref) > 5 * b.relative_rms_error(b.bf16_linear(x, w_bf16, codes8, scale), ref)
