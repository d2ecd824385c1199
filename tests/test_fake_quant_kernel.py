"""Triton fake-quant kernels against the pure-torch reference (CPU interpreter; bf16 on GPU only)."""
import pytest
import torch
import torch.nn.functional as F

from triton_kernels import fake_quant as fq
from _launches import LaunchCounter

M, K, N = 37, 48, 40  # none a multiple of the 16-wide interpreter tiles except K
RULE_KW = dict(percentile=99.0, sigma=2.5)  # strong clipping so the mask matters


def _weight(n=N, k=K, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[3, 5], w[11, 0], w[20, k - 1] = 0.9, -0.7, 0.5  # outliers, clipped by percentile / sigma
    w[7] = 0.0  # an all-zero row
    return w


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _run(impl, x, w, dy, **kw):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = fq.fake_quant_linear(x, w, impl=impl, **kw)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    return y, dx, dw


@pytest.mark.parametrize("bits", [5, 6, 8])
@pytest.mark.parametrize("rule", [r for r in fq.RULES if r != "percentile"])  # percentile: torch.quantile, no kernel
def test_row_scales_kernel_bit_exact(bits, rule):
    w = _weight(k=45)  # odd row length
    got = fq.row_scales(w, bits=bits, rule=rule, impl="triton", **RULE_KW)
    want = fq.row_scales_reference(w, bits=bits, rule=rule, **RULE_KW)
    assert got.dtype == torch.float16 and torch.equal(got, want)
    assert got[7] == fq.MIN_SCALE


def _kernel_rule(w, bits, rule):
    """(rule, given scale) the weight kernel gets: percentile scales come from torch.quantile."""
    if rule == "percentile":
        return "given", fq.row_scales_reference(w, bits=bits, rule=rule, **RULE_KW)
    return rule, None


@pytest.mark.parametrize("bits", [5, 6, 8])
@pytest.mark.parametrize("rule", fq.RULES)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_weight_kernel_is_the_exporters_quantiser(bits, rule, out_dtype):
    """One launch gives the exporter's scales and dequantize(quantize(W)) cast to out_dtype, bit for bit.

    bf16 is checked on a GPU only: the interpreter (Triton 3.9) truncates float32 -> bf16 casts
    instead of rounding to nearest even, even with ``fp_downcast_rounding="rtne"``.
    """
    w = _weight(k=45)
    scale = fq.row_scales_reference(w, bits=bits, rule=rule, **RULE_KW)
    kernel_rule, given = _kernel_rule(w, bits, rule)
    on = torch.ones((), dtype=torch.bool)
    s, wq = fq.fq_weight_triton(w, bits=bits, rule=kernel_rule, sigma=RULE_KW["sigma"], scale=given, active=on,
                                out_dtype=out_dtype)
    assert torch.equal(s, scale)
    assert wq.dtype == out_dtype and torch.equal(wq, fq.fake_quant_reference(w, scale, bits).to(out_dtype))
    s_off, w_off = fq.fq_weight_triton(w.half(), bits=bits, rule=kernel_rule, sigma=RULE_KW["sigma"], scale=given,
                                       active=~on, out_dtype=out_dtype)
    assert torch.equal(w_off, w.half().to(out_dtype)), "inactive: the weight passes unquantised"


@pytest.mark.parametrize("bits", [5, 6, 8])
@pytest.mark.parametrize("rule", fq.RULES)
def test_linear_forward_and_mask_are_exact(bits, rule):
    """x = I gives y = fq(W)^T; dy = I gives dx = fq(W); with x = I, dy = 1: dW = g(W). All exact."""
    w = _weight()
    scale = fq.row_scales_reference(w, bits=bits, rule=rule, **RULE_KW)
    wq = fq.fake_quant_reference(w, scale, bits)
    y, _, dw = _run("triton", torch.eye(K), w, torch.ones(K, N), bits=bits, rule=rule, **RULE_KW)
    assert torch.equal(y, wq.T)
    g = fq.fake_quant_grad_reference(w, scale, bits)
    assert torch.equal(dw, g)
    assert (g == 0).any() == (rule != "maxabs"), "percentile / sigma must clip the outliers, maxabs never"
    _, dx, _ = _run("triton", torch.randn(N, K), w, torch.eye(N), bits=bits, rule=rule, **RULE_KW)
    assert torch.equal(dx, wq)
    on, t = torch.ones((), dtype=torch.bool), torch.full((), 0.25)
    dw_soft = fq.fq_linear_dw_triton(torch.ones(K, N), torch.eye(K), w, scale, bits=bits, active=on,
                                     surrogate="softround", temperature=t)
    g_soft = fq.fake_quant_grad_reference(w, scale, bits, surrogate="softround", temperature=t)
    torch.testing.assert_close(dw_soft, g_soft, atol=1e-5, rtol=1e-5)
    assert torch.equal(dw_soft == 0, g == 0)


@pytest.mark.parametrize("rule", fq.RULES)
def test_one_weight_launch_per_forward_and_no_float32_copy(monkeypatch, rule):
    """Forward: one weight-kernel launch; backward: one dW launch; the saved fq(W) has x's dtype."""
    from triton_kernels.fake_quant import kernels
    weight_k = LaunchCounter(kernels._fq_weight_kernel)
    dw_k = LaunchCounter(kernels._fq_linear_dw_kernel)
    monkeypatch.setattr(kernels, "_fq_weight_kernel", weight_k)
    monkeypatch.setattr(kernels, "_fq_linear_dw_kernel", dw_k)
    x = torch.randn(M, K, dtype=torch.float16, requires_grad=True)
    w = _weight().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fq.fake_quant_linear(x, w, bits=6, rule=rule, impl="triton", **RULE_KW)
    assert (weight_k.launches, dw_k.launches) == (1, 0)
    y.backward(torch.randn(M, N, dtype=torch.float16))
    assert (weight_k.launches, dw_k.launches) == (1, 1)
    weight_shaped = [t for t in saved if t.shape == w.shape]
    assert weight_shaped and all(t.dtype == torch.float16 or t is w for t in weight_shaped), \
        [(t.dtype, t is w) for t in weight_shaped]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dw_launcher_passes_its_whole_launch_config(monkeypatch, dtype):
    """The dW launcher launches with every entry of ``dw_tile_config`` (the dot precision included)
    and nothing of its own, so ``tests/test_sm90_compile.py``, which compiles
    ``dw_tile_config(dtype, on_gpu=True)``, compiles the precision a GPU launch uses."""
    from triton_kernels.fake_quant import kernels
    launched = []
    real = kernels._fq_linear_dw_kernel

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append(kwargs)
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(kernels, "_fq_linear_dw_kernel", Recorder())
    w = _weight()
    fq.fq_linear_dw_triton(torch.randn(M, N, dtype=dtype), torch.randn(M, K, dtype=dtype), w,
                           fq.row_scales(w, bits=6), bits=6, active=torch.ones((), dtype=torch.bool))
    cfg = fq.dw_tile_config(dtype, on_gpu=False)
    assert [{k: v for k, v in kw.items() if k not in ("QMAX", "SOFT")} for kw in launched] == [cfg]
    assert cfg["PREC"] == ("ieee" if dtype == torch.float32 else "tf32")
    assert {fq.dw_tile_config(dtype, on_gpu=g)["PREC"] for g in (False, True)} == {cfg["PREC"]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bits,rule,surrogate", [(5, "maxabs", "softround"), (6, "percentile", "ste"),
                                                 (6, "sigma", "softround"), (8, "sigma", "ste"),
                                                 (5, "percentile", "ste"), (8, "maxabs", "softround")])
def test_fwd_and_grads_match_reference(dtype, bits, rule, surrogate):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, M // 2 + 1, K, generator=g).to(dtype)  # 3-D input, 38 tokens
    dy = torch.randn(2, M // 2 + 1, N, generator=g).to(dtype)
    kw = dict(bits=bits, rule=rule, surrogate=surrogate, temperature=0.5, **RULE_KW)
    got = _run("triton", x, _weight(), dy, **kw)
    # oracle: the reference on float32 copies (the kernels accumulate in float32)
    want = _run("torch", x.float(), _weight(), dy.float(), **kw)
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    for name, a, b in zip(("y", "dx", "dW"), got, want):
        assert a.dtype == (torch.float32 if name == "dW" else dtype)
        assert _rel_err(a, b) < tol, name


def test_dw_split_over_tokens_matches_single_pass():
    x, dy, w = torch.randn(M, K), torch.randn(M, N), _weight()
    scale = fq.row_scales_reference(w, bits=6, rule="sigma", sigma=2.5)
    on, t = torch.ones((), dtype=torch.bool), torch.full((), 0.3)
    kw = dict(bits=6, active=on, surrogate="softround", temperature=t)
    one = fq.fq_linear_dw_triton(dy, x, w, scale, split_m=1, **kw)
    three = fq.fq_linear_dw_triton(dy, x, w, scale, split_m=3, **kw)
    torch.testing.assert_close(three, one, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("rule", ["percentile", "sigma"])
def test_clipped_weights_get_zero_gradient(impl, rule):
    w = _weight()
    scale = fq.row_scales_reference(w, bits=5, rule=rule, **RULE_KW)
    clipped = (w / scale.float()[:, None]).round().abs() > 15
    assert clipped[3, 5] and clipped[11, 0] and clipped[20, K - 1]
    _, _, dw = _run(impl, torch.randn(M, K), w, torch.randn(M, N), bits=5, rule=rule, **RULE_KW)
    assert (dw[clipped] == 0).all() and (dw[~clipped] != 0).float().mean() > 0.95


def test_rounding_is_half_to_even_in_both_paths():
    s = 2.0 ** -6  # exact in fp16; maxabs row maximum 31 * s makes the scale exactly s
    halves = torch.tensor([31.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 30.5, -30.5, 3.25, -31.0, 0.0, 4.5, 5.5, 6.5, 7.5])
    w = (halves * s)[None].repeat(17, 1)
    scale = fq.row_scales_reference(w, bits=6, rule="maxabs")
    assert (scale.float() == s).all()
    expect = torch.tensor([31, 0, 2, 2, 0, -2, -2, 30, -30, 3, -31, 0, 4, 6, 6, 8], dtype=torch.int8)
    assert torch.equal(fq.quantize_codes(w, scale, 6)[0], expect)
    y, _, _ = _run("triton", torch.eye(16), w, torch.ones(16, 17), bits=6, rule="maxabs")
    assert torch.equal(y[:, 0], expect.float() * s)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_inactive_is_a_plain_linear(impl):
    x, w, dy = torch.randn(M, K), _weight(), torch.randn(M, N)
    off = torch.zeros((), dtype=torch.bool)
    y, dx, dw = _run(impl, x, w, dy, bits=5, rule="sigma", active=off, **RULE_KW)
    yr, dxr, dwr = _run("torch", x, w, dy, bits=5, rule="sigma", active=False, **RULE_KW)
    assert torch.equal(yr, F.linear(x, w)) and torch.equal(dwr, dy.T @ x)
    for a, b in ((y, yr), (dx, dxr), (dw, dwr)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_softround_slope_limits():
    w = _weight()
    scale = fq.row_scales_reference(w, bits=6, rule="maxabs")
    ste = fq.fake_quant_grad_reference(w, scale, 6)
    hot = fq.fake_quant_grad_reference(w, scale, 6, surrogate="softround", temperature=1e3)
    torch.testing.assert_close(hot, ste, atol=1e-5, rtol=0)  # T -> inf: the STE
    x = torch.arange(-3000, 3001) / 1000  # slope integrates to 1 per step
    one = torch.ones(1, dtype=torch.float16)
    cold = fq.fake_quant_grad_reference(x[None], one, 6, surrogate="softround", temperature=0.05)[0]
    assert abs(torch.trapezoid(cold, x).item() / 6 - 1) < 1e-3
    assert cold[3000].item() < 1e-6 and cold[3500].item() > 9  # flat at integers (x=0), steep at ties (x=0.5)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_autocast_multiplies_in_the_autocast_dtype_like_f_linear(impl):
    """A float32 x under autocast computes in the autocast dtype (fp16 here: the interpreter's bf16
    dot is broken), as F.linear does; dx comes back float32; no float32 copy of fq(W) is saved."""
    x = torch.randn(M, K, requires_grad=True)
    w, dy = _weight().requires_grad_(), torch.randn(M, N)
    saved = []
    with torch.autocast("cpu", dtype=torch.float16), \
            torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fq.fake_quant_linear(x, w, bits=6, rule="sigma", impl=impl, **RULE_KW)
        plain = F.linear(x, w)
    assert y.dtype == plain.dtype == torch.float16
    scale = fq.row_scales_reference(w, bits=6, rule="sigma", **RULE_KW)
    want = F.linear(x.half(), fq.fake_quant_reference(w, scale, 6).half())
    torch.testing.assert_close(y, want, atol=2e-3, rtol=2e-3)
    dx, dw = torch.autograd.grad(y, (x, w), dy.half())
    assert dx.dtype == torch.float32 and dw.dtype == torch.float32
    assert not [t for t in saved if t.shape == w.shape and t.dtype == torch.float32 and t is not w]


def test_bad_inputs_raise_clear_errors(monkeypatch):
    w, x = _weight(), torch.randn(M, K)
    scale = fq.row_scales_reference(w, bits=6)
    on = torch.ones((), dtype=torch.bool)
    with pytest.raises(ValueError, match="bits must be"):
        fq.fake_quant_linear(x, w, bits=9)
    with pytest.raises(ValueError, match="rule must be"):
        fq.fake_quant_linear(x, w, bits=6, rule="minmax")
    with pytest.raises(ValueError, match="surrogate must be"):
        fq.fake_quant_linear(x, w, bits=6, surrogate="sigmoid")
    with pytest.raises(ValueError, match="temperature must be"):
        fq.fake_quant_linear(x, w, bits=6, temperature=0.0)
    with pytest.raises(ValueError, match="features but weight"):
        fq.fake_quant_linear(torch.randn(M, K + 1), w, bits=6)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        fq.fake_quant_linear(x.double(), w, bits=6, impl="triton")
    with pytest.raises(ValueError, match="x is on meta"):
        fq.fake_quant_linear(x.to("meta"), w, bits=6, impl="triton")
    with pytest.raises(ValueError, match="contiguous"):
        fq.fq_linear_dw_triton(torch.randn(N, M).T, x, w, scale, bits=6, active=on)
    with pytest.raises(ValueError, match="scale must be float16"):
        fq.fq_linear_dw_triton(torch.randn(M, N), x, w, scale.float(), bits=6, active=on)
    with pytest.raises(TypeError, match="one dtype"):
        fq.fq_linear_dw_triton(torch.randn(M, N).half(), x, w, scale, bits=6, active=on)
    with pytest.raises(TypeError, match="one-element tensor"):
        fq.fq_linear_dw_triton(torch.randn(M, N), x, w, scale, bits=6, active=True)
    with pytest.raises(ValueError, match="exactly when rule='given'"):
        fq.fq_weight_triton(w, bits=6, rule="given")
    with pytest.raises(ValueError, match="handles"):
        fq.fq_weight_triton(w, bits=6, rule="percentile")
    with pytest.raises(ValueError, match="rows must be contiguous"):
        fq.fq_weight_triton(w.T, bits=6, rule="maxabs")
    with pytest.raises(ValueError, match="2-D"):
        fq.row_scales(torch.randn(4), bits=6)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        fq.fake_quant_linear(x, w, bits=6, impl="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot and float32->bf16 casts are wrong in the interpreter; needs a CUDA GPU")
@pytest.mark.parametrize("rule", fq.RULES)
def test_bf16_on_gpu(rule):
    dev = torch.device("cuda")
    x = torch.randn(300, 192, device=dev, dtype=torch.bfloat16)
    w = torch.randn(260, 192, device=dev) * 0.05
    dy = torch.randn(300, 260, device=dev, dtype=torch.bfloat16)
    kw = dict(bits=6, rule=rule, surrogate="softround", temperature=0.5, **RULE_KW)
    assert torch.equal(fq.row_scales(w, bits=6, rule=rule, impl="triton", **RULE_KW),
                       fq.row_scales_reference(w, bits=6, rule=rule, **RULE_KW))
    got = _run("triton", x, w, dy, **kw)
    want = _run("torch", x.float(), w, dy.float(), **kw)
    for a, b in zip(got, want):
        assert _rel_err(a, b) < 2e-2
    eye = torch.eye(192, device=dev)
    scale = fq.row_scales_reference(w, bits=6, rule=rule, **RULE_KW)
    y = fq.fake_quant_linear(eye, w, impl="triton", **kw)
    assert torch.equal(y, fq.fake_quant_reference(w, scale, 6).T)  # div_rn + rne exact on the GPU too
    rule_k, given = _kernel_rule(w, 6, rule)
    s16, wq = fq.fq_weight_triton(w, bits=6, rule=rule_k, sigma=RULE_KW["sigma"], scale=given,
                                  out_dtype=torch.bfloat16)
    assert torch.equal(s16, scale) and torch.equal(wq, fq.fake_quant_reference(w, scale, 6).bfloat16())
