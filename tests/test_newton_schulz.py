"""triton_kernels.newton_schulz against a float64 iteration, its singular-value band, and bad inputs.

On a CPU machine the Triton path runs under TRITON_INTERPRET=1 (set by conftest) with fp32/fp16
inputs; bf16 and CUDA-graph capture are checked by the GPU-only tests at the end.
"""
import math

import numpy as np
import pytest
import torch

from triton_kernels._dispatch import interpreter_enabled
from triton_kernels.newton_schulz import (
    ns_coefficients,
    newton_schulz,
    newton_schulz_reference,
    newton_schulz_triton,
)

DEV = "cuda" if torch.cuda.is_available() and not interpreter_enabled() else "cpu"
SCHEDULES = ["quintic", "polar_express", "polar_express_5"]
CUSTOM = [(2.0, -1.5, 0.5), (1.875, -1.25, 0.375)]
# schedule -> (floor, lo, hi, gain): for sigma/||X||_F >= floor the 5-step output singular value lies in
# [lo, hi]; below the floor it is >= gain * sigma/||X||_F. The exact float64 ranges of the scalar map
# (see test_pinned_bands_are_tight) are quintic [0.6818, 1.2024], polar_express [0.8401, 1.1236],
# polar_express_5 [0.8466, 1.1411]; the pins leave ~0.005 of margin for fp32 rounding.
BANDS = {
    "quintic": (2e-3, 0.675, 1.21, 0.69),
    "polar_express": (1e-3, 0.835, 1.13, 0.87),
    "polar_express_5": (1e-3, 0.84, 1.15, 0.86),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _scalar_map(sigma: np.ndarray, schedule, norm: float = 1.0, eps: float = 0.0, steps: int = 5) -> np.ndarray:
    """What the iteration does to one singular value ``sigma`` of a matrix with Frobenius norm ``norm``."""
    coeffs, safety = ns_coefficients(schedule, steps)
    y = sigma / (norm * safety + eps)
    for a, b, c in coeffs:
        y = a * y + b * y**3 + c * y**5
    return y


@pytest.mark.parametrize("shape,schedule", [
    *[(shape, sched) for shape in [(3, 24, 40), (2, 17, 33), (2, 33, 17), (19, 29), (4, 16, 16)]
      for sched in SCHEDULES + [CUSTOM]],
    ((1, 70, 90), "quintic"),  # 2 x 2 tiles of the 64-wide Gram: exercises the mirrored stores
])
def test_triton_fp32_matches_float64(shape, schedule):
    x = torch.randn(shape, device=DEV)
    out = newton_schulz(x, schedule=schedule, impl="triton")
    ref = newton_schulz_reference(x.double(), schedule=schedule)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 17, 33), (2, 33, 17)])
def test_torch_fp32_matches_float64(shape):
    x = torch.randn(shape)
    out = newton_schulz(x, schedule="polar_express", impl="torch")
    torch.testing.assert_close(out.double(), newton_schulz_reference(x.double(), schedule="polar_express"),
                               atol=2e-5, rtol=0)


def test_triton_fp16_matches_float64():
    x = torch.randn(2, 24, 40, device=DEV).half()
    out = newton_schulz(x, impl="triton")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), newton_schulz_reference(x.double()), atol=4e-3, rtol=0)


def test_steps_and_custom_schedule_semantics():
    coeffs, safety = ns_coefficients([(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)], 4)
    assert coeffs == [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0), (4.0, 5.0, 6.0), (4.0, 5.0, 6.0)] and safety == 1.0
    assert ns_coefficients("polar_express", 2)[0] == list(ns_coefficients("polar_express", 9)[0][:2])
    assert ns_coefficients("polar_express", 10)[0][-1] == (1.875, -1.25, 0.375)
    assert ns_coefficients("quintic", 3) == ([(3.4445, -4.7750, 2.0315)] * 3, 1.0)
    x = torch.randn(2, 16, 24, device=DEV)
    for steps in (1, 3, 7):
        torch.testing.assert_close(newton_schulz(x, steps=steps, schedule="polar_express", impl="triton").double(),
                                   newton_schulz_reference(x.double(), steps=steps, schedule="polar_express"),
                                   atol=2e-5, rtol=0)


def test_tall_is_transposed_wide_and_strides_do_not_matter():
    # Layouts change only the summation order of the Frobenius norm: results agree to fp32 rounding.
    x = torch.randn(2, 40, 24, device=DEV)
    tall = newton_schulz(x, impl="triton")
    wide = newton_schulz(x.mT.contiguous(), impl="triton")
    torch.testing.assert_close(tall, wide.mT, atol=1e-5, rtol=0)
    big = torch.randn(3, 24, 80, device=DEV)
    sliced = big[:, :, ::2]  # non-contiguous (3, 24, 40)
    torch.testing.assert_close(newton_schulz(sliced, impl="triton"),
                               newton_schulz(sliced.contiguous(), impl="triton"), atol=1e-5, rtol=0)


def _conditioned(batch: int, m: int, n: int, cond: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (batch, m, n) float64 matrices with singular values logspaced from 1 to 1/cond."""
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(batch, m, k, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(batch, n, k, dtype=torch.float64, generator=gen))
    s = torch.logspace(0, -math.log10(cond), k, dtype=torch.float64)
    return u @ torch.diag_embed(s.expand(batch, k)) @ v.mT, s


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("cond", [1.0, 1e2, 1e4])
def test_singular_values_follow_the_scalar_map_and_stay_in_band(schedule, cond):
    floor, lo, hi, gain = BANDS[schedule]
    gen = torch.Generator().manual_seed(int(cond))
    x, s = _conditioned(2, 24, 40, cond, gen)
    xs = (s / s.norm()).numpy()  # normalised input singular values, descending
    expect = _scalar_map(s.numpy(), schedule, norm=s.norm().item(), eps=1e-7)
    outs = {"float64": newton_schulz_reference(x, schedule=schedule),
            "triton_fp32": newton_schulz(x.float().to(DEV), schedule=schedule, impl="triton").double().cpu()}
    for name, out in outs.items():
        sv = torch.linalg.svdvals(out).numpy()  # (2, 24), descending
        order = np.argsort(-expect)
        tol = 1e-9 if name == "float64" else 2e-4
        np.testing.assert_allclose(sv, np.broadcast_to(expect[order], sv.shape), atol=tol, err_msg=name)
        assert sv.max() <= hi, name
        inband = xs >= floor
        assert (expect[inband] >= lo).all() and (expect[inband] <= hi).all()
        assert (expect[~inband] >= gain * xs[~inband]).all()
        if cond <= 1e2:
            assert inband.all() and sv.min() >= lo, name
        else:
            assert not inband.all()  # 1e4 puts the smallest directions below the floor: not in band


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_pinned_bands_are_tight(schedule):
    """The pins are the true range of the 5-step map over [floor, 1], to within 0.01 (not loose)."""
    floor, lo, hi, gain = BANDS[schedule]
    x = np.logspace(math.log10(floor), 0, 400_001)
    y = _scalar_map(x, schedule)
    assert lo <= y.min() <= lo + 0.01 and hi - 0.01 <= y.max() <= hi
    below = np.logspace(-8, math.log10(floor), 100_001)
    yb = _scalar_map(below, schedule)
    assert (np.diff(yb) > 0).all() and (yb >= gain * below).all()


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12])
def test_zero_and_tiny_inputs_are_finite(impl, scale):
    x = torch.randn(2, 17, 33, device=DEV) * scale
    out = newton_schulz(x, impl=impl)
    assert torch.isfinite(out).all()
    if scale == 0.0:
        assert (out == 0).all()
    rank_one = torch.outer(torch.randn(17), torch.randn(33)).to(DEV)
    assert torch.isfinite(newton_schulz(rank_one, impl=impl)).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="matrix or a"):
        newton_schulz(torch.randn(5))
    with pytest.raises(ValueError, match="matrix or a"):
        newton_schulz(torch.randn(2, 2, 3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        newton_schulz(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="non-empty"):
        newton_schulz(torch.randn(2, 0, 4))
    with pytest.raises(ValueError, match="unknown schedule"):
        newton_schulz(torch.randn(3, 4), schedule="cubic")
    with pytest.raises(ValueError, match="triples"):
        newton_schulz(torch.randn(3, 4), schedule=[(1.0, 2.0)])
    with pytest.raises(ValueError, match="positive int"):
        newton_schulz(torch.randn(3, 4), steps=0)
    with pytest.raises(ValueError, match="impl must be"):
        newton_schulz(torch.randn(3, 4), impl="cuda")
    with pytest.raises(TypeError, match="supports"):
        newton_schulz(torch.randn(3, 4, dtype=torch.float64, device=DEV), impl="triton")
    with pytest.raises(ValueError, match="wide"):
        newton_schulz_triton(torch.randn(1, 5, 3), coeffs=[(1.0, 0.0, 0.0)])
    with pytest.raises(ValueError, match=r"\(B, m, n\)"):
        newton_schulz_triton(torch.randn(5, 6), coeffs=[(1.0, 0.0, 0.0)])


def test_empty_batch():
    x = torch.randn(0, 8, 16, device=DEV)
    assert newton_schulz(x, impl="triton").shape == (0, 8, 16)
    assert newton_schulz(x, impl="torch").shape == (0, 8, 16)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or interpreter_enabled(),
                                reason="needs a CUDA GPU with TRITON_INTERPRET=0")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", [(4, 256, 512), (3, 512, 256), (2, 200, 333), (11, 512, 2048)])
@pytest.mark.parametrize("schedule", ["quintic", "polar_express"])
def test_gpu_bf16_matches_reference(shape, schedule):
    torch.manual_seed(0)
    x = torch.randn(shape, device="cuda").bfloat16()
    out = newton_schulz(x, schedule=schedule, impl="triton")
    ref64 = newton_schulz_reference(x.double(), schedule=schedule)
    ref16 = newton_schulz_reference(x, schedule=schedule)
    assert out.dtype == torch.bfloat16
    rel = lambda a: ((a.double() - ref64).norm() / ref64.norm()).item()  # noqa: E731
    # bf16 rounds A, B and X every step; the Triton result must be as close to float64 as torch's own bf16.
    assert rel(out) < max(2 * rel(ref16), 2e-2)
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@needs_cuda
def test_gpu_cuda_graph_capture():
    x = torch.randn(3, 256, 384, device="cuda").bfloat16()
    eager = newton_schulz(x, impl="triton")  # compiles the kernels before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = newton_schulz(x, impl="triton")
    x.copy_(torch.randn_like(x.float()).bfloat16())
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, newton_schulz(x, impl="triton"), atol=0, rtol=0)
    assert not torch.equal(captured, eager)
