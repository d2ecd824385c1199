"""triton_kernels.lora: the batched per-document LoRA linear, its gradients, the beta1 = 0 AdamW step and the
per-document reset, each against its pure-torch reference (CPU interpreter; bf16 on GPU only)."""
import math

import pytest
import torch

from triton_kernels import lora
from triton_kernels.lora import (
    LoraLayout,
    lora_adamw_step_,
    lora_linear,
    lora_reset_,
    ops,
)
from triton_kernels.lora.reference import lora_linear_reference

D, T, IN, OUT = 3, 37, 24, 40  # T spans three 16-row interpreter tiles, the last one partial
LENGTHS = [37, 20, 0]  # full, mid-tile, empty
SCALE = 1.8
# large enough that the weight-decay order, eps and the bias correction each move the result well past fp32 noise
OPT = dict(lr=0.05, beta2=0.9, eps=1e-3, weight_decay=3.0)


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """The one error metric of these tests: ||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(r=5, n_in=IN, n_out=OUT, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(D, T, n_in, generator=g).to(dtype)
    A = torch.randn(D, r, n_in, generator=g) / n_in ** 0.5
    B = torch.randn(D, n_out, r, generator=g) / r ** 0.5
    W = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
    dy = torch.randn(D, T, n_out, generator=g).to(dtype)
    return x, A, B, W, dy


def _run(impl, x, A, B, dy, **kw):
    """``(y, dX, dA, dB)`` of ``lora_linear`` with upstream gradient ``dy``."""
    x, A, B = (t.detach().clone().requires_grad_() for t in (x, A, B))
    y = lora_linear(x, A, B, impl=impl, scale=SCALE, **kw)
    return (y.detach(), *torch.autograd.grad(y, (x, A, B), dy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("base", [True, False], ids=["with_W", "delta_only"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("r", [5, 17])  # 17 pads to a 32-wide rank tile
def test_forward_and_every_gradient_match_reference(dtype, base, padded, r):
    x, A, B, W, dy = _inputs(r=r, dtype=dtype)
    kw = dict(weight=W if base else None, lengths=torch.tensor(LENGTHS) if padded else None)
    got = _run("triton", x, A, B, dy, **kw)
    want = _run("torch", x.float(), A, B, dy.float(), **kw)  # the oracle in fp32 (the kernels accumulate in fp32)
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    for name, a, b in zip(("y", "dX", "dA", "dB"), got, want):
        assert a.dtype == (dtype if name in ("y", "dX") else torch.float32), name
        assert a.shape == b.shape and _rel_rms(a, b) < tol, (name, _rel_rms(a, b))


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("base", [True, False], ids=["with_W", "delta_only"])
def test_padding_gives_the_gradients_of_each_document_alone(impl, base):
    """dA_b, dB_b and the valid rows of y_b and dX_b equal a run on document b's valid tokens alone; padded
    rows get the base path only (zero without W)."""
    x, A, B, W, dy = _inputs()
    w, lengths = (W if base else None), torch.tensor(LENGTHS)
    y, dX, dA, dB = _run(impl, x, A, B, dy, weight=w, lengths=lengths)
    for b, n in enumerate(LENGTHS):
        base_y = x[b, n:] @ W.T if base else torch.zeros(T - n, OUT)
        base_dx = dy[b, n:] @ W if base else torch.zeros(T - n, IN)
        torch.testing.assert_close(y[b, n:], base_y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dX[b, n:], base_dx, atol=1e-5, rtol=1e-5)
        if n == 0:
            assert torch.equal(dA[b], torch.zeros_like(dA[b])) and torch.equal(dB[b], torch.zeros_like(dB[b]))
            continue
        yb, dXb, dAb, dBb = _run("torch", x[b:b + 1, :n], A[b:b + 1], B[b:b + 1], dy[b:b + 1, :n], weight=w)
        for name, a, ref in (("y", y[b, :n], yb[0]), ("dX", dX[b, :n], dXb[0]), ("dA", dA[b], dAb[0]),
                             ("dB", dB[b], dBb[0])):
            assert _rel_rms(a, ref) < 1e-5, (b, name)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_lengths_outside_0_to_T_are_clamped(impl):
    x, A, B, W, dy = _inputs()
    got = _run(impl, x, A, B, dy, weight=W, lengths=torch.tensor([T + 50, -3, 20], dtype=torch.int32))
    want = _run(impl, x, A, B, dy, weight=W, lengths=torch.tensor([T, 0, 20]))
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("base", [True, False], ids=["with_W", "delta_only"])
def test_triton_never_reads_padded_rows(base):
    """NaN in every padded row of x and dY changes no valid row and no adapter gradient (the kernels mask the
    padding out; the torch reference would multiply NaN by zero)."""
    x, A, B, W, dy = _inputs()
    w, lengths = (W if base else None), torch.tensor(LENGTHS)
    clean = _run("triton", x, A, B, dy, weight=w, lengths=lengths)
    for b, n in enumerate(LENGTHS):
        x[b, n:], dy[b, n:] = float("nan"), float("nan")
    y, dX, dA, dB = _run("triton", x, A, B, dy, weight=w, lengths=lengths)
    assert torch.equal(dA, clean[2]) and torch.equal(dB, clean[3])
    for b, n in enumerate(LENGTHS):
        assert torch.equal(y[b, :n], clean[0][b, :n]) and torch.equal(dX[b, :n], clean[1][b, :n])
        if not base:  # no base path: padded rows are exactly zero whatever x and dY hold there
            assert (y[b, n:] == 0).all() and (dX[b, n:] == 0).all()


@pytest.mark.parametrize("base", [True, False], ids=["with_W", "delta_only"])
def test_expand_split_over_programs_matches_one_program(base):
    x, A, B, W, dy = _inputs()
    w, lengths = (W if base else None), torch.tensor(LENGTHS)
    y1 = ops.lora_forward_triton(x, A, B, w, lengths, SCALE, split=1)
    y3 = ops.lora_forward_triton(x, A, B, w, lengths, SCALE, split=3)  # 3 programs share 3 column tiles
    torch.testing.assert_close(y3, y1, atol=0, rtol=0)
    g1 = ops.lora_backward_triton(dy, x, A, B, w, lengths, SCALE, split=1)
    g2 = ops.lora_backward_triton(dy, x, A, B, w, lengths, SCALE, split=2)  # 2 programs over 2 column tiles
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_strided_inputs():
    """x, A, B as transposed views (the flat layout's adapters have a row stride of numel)."""
    x, A, B, W, dy = _inputs()
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    At = A.transpose(1, 2).contiguous().transpose(1, 2)
    Bt = B.transpose(1, 2).contiguous().transpose(1, 2)
    got = _run("triton", xt, At, Bt, dy, weight=W)
    want = _run("torch", x, A, B, dy, weight=W)
    for a, b in zip(got, want):
        assert _rel_rms(a, b) < 1e-5


class _LaunchCounter:
    """Stands in for a Triton kernel object: records each ``kernel[grid](...)`` launch's constexprs, then launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_launches_and_the_forward_never_stores_the_intermediate(monkeypatch):
    from triton_kernels.lora import kernels
    se = _LaunchCounter(kernels._lora_shrink_expand_kernel)
    gk = _LaunchCounter(kernels._lora_grad_kernel)
    monkeypatch.setattr(kernels, "_lora_shrink_expand_kernel", se)
    monkeypatch.setattr(kernels, "_lora_grad_kernel", gk)
    x, A, B, W, dy = _inputs()
    x, A, B = (t.requires_grad_() for t in (x, A, B))
    y = lora_linear(x, A, B, weight=W, scale=SCALE, impl="triton")
    assert len(se.launches) == 1 and not se.launches[0]["STORE_MID"] and se.launches[0]["EXPAND"]
    y.backward(dy)
    assert len(se.launches) == 3 and len(gk.launches) == 1
    assert [(k["STORE_MID"], k["EXPAND"]) for k in se.launches[1:]] == [(True, True), (True, False)]


def test_opcheck_and_compile():
    x, A, B, W, _ = _inputs()
    A, B = A.requires_grad_(), B.requires_grad_()
    for w, n in ((W, torch.tensor(LENGTHS)), (None, None)):
        torch.library.opcheck(ops.lora_linear_op, (x.requires_grad_(), A, B, w, n, SCALE))
    f = torch.compile(lambda x, A, B: lora_linear(x, A, B, weight=W, scale=SCALE, impl="triton"),
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x, A, B), lora_linear_reference(x, A, B, weight=W, scale=SCALE), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_autocast_computes_in_the_autocast_dtype(impl):
    x, A, B, W, _ = _inputs()
    with torch.autocast("cpu", dtype=torch.float16):
        y = lora_linear(x, A, B, weight=W, scale=SCALE, impl=impl)
    assert y.dtype == torch.float16
    assert _rel_rms(y, lora_linear_reference(x, A, B, weight=W, scale=SCALE)) < 3e-3


def test_impl_dispatch(monkeypatch):
    x, A, B, W, _ = _inputs()
    calls = []
    real = lora.lora_linear_op
    monkeypatch.setattr(lora, "lora_linear_op", lambda *a: calls.append(1) or real(*a))
    lora_linear(x, A, B, weight=W, scale=SCALE)  # auto under the interpreter: Triton
    assert calls == [1]
    lora_linear(x, A, B, weight=W, scale=SCALE, impl="torch")
    assert calls == [1]
    with pytest.raises(ValueError, match="impl must be"):
        lora_linear(x, A, B, weight=W, scale=SCALE, impl="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    lora_linear(x, A, B, weight=W, scale=SCALE)  # auto on a CPU without the interpreter: the reference
    assert calls == [1]
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        lora_linear(x, A, B, weight=W, scale=SCALE, impl="triton")
    p, v, s = torch.zeros(D, 8), torch.zeros(D, 8), torch.zeros(D, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        lora_adamw_step_(p, p, v, s, impl="triton", **OPT)


def test_bad_inputs_raise_clear_errors():
    x, A, B, W, _ = _inputs()
    kw = dict(scale=SCALE)
    cases = [
        (dict(x=x[0]), "x must be"),
        (dict(A=A[:, :, :-1]), "A must be"),
        (dict(A=A[:2]), "A must be"),
        (dict(B=B[:, :, :-1]), "B must be"),
        (dict(weight=W[:-1]), "weight must be"),
        (dict(x=x.int()), "x must be float32"),
        (dict(A=A.double()), "A must be float32"),
        (dict(B=B.to("meta")), "B is on meta"),
        (dict(weight=W.clone().requires_grad_()), "weight requires grad"),
        (dict(lengths=torch.tensor([1.0, 2.0, 3.0])), "lengths must be"),
        (dict(lengths=torch.tensor([1, 2])), "lengths must be"),
        (dict(scale=float("nan")), "scale must be"),
    ]
    for change, msg in cases:
        args = dict(x=x, A=A, B=B, weight=W, lengths=None, **kw)
        args.update(change)
        for impl in ("torch", "triton"):
            with pytest.raises(ValueError, match=msg):
                lora_linear(args["x"], args["A"], args["B"], weight=args["weight"], scale=args["scale"],
                            lengths=args["lengths"], impl=impl)
    wide_a = torch.randn(D, IN + 1, IN)  # rank 25 > in 24
    with pytest.raises(ValueError, match="rank r=25 must be in 1..in_features=24"):
        lora_linear(x, wide_a, torch.randn(D, OUT, IN + 1), scale=1.0)
    big = torch.randn(D, 129, 160)
    with pytest.raises(ValueError, match="rank 129 > 128"):
        lora_linear(torch.randn(D, 4, 160), big, torch.randn(D, 8, 129), scale=1.0, impl="triton")


def test_bad_optimizer_state_raises_clear_errors():
    p, g, v = torch.zeros(D, 8), torch.zeros(D, 8), torch.zeros(D, 8)
    s = torch.zeros(D, dtype=torch.int64)
    with pytest.raises(ValueError, match="exp_avg_sq must be float32"):
        lora_adamw_step_(p, g, v.half(), s, **OPT)
    with pytest.raises(ValueError, match="grad has shape"):
        lora_adamw_step_(p, g[:, :4], v, s, **OPT)
    with pytest.raises(ValueError, match="step must be"):
        lora_adamw_step_(p, g, v, s.float(), **OPT)
    with pytest.raises(ValueError, match="param must be a \\(D, N\\)"):
        lora_adamw_step_(p.T, g, v, s, **OPT)
    with pytest.raises(ValueError, match="keep must be"):
        lora_reset_(p, v, s, docs=torch.ones(D, dtype=torch.bool), keep=9)
    with pytest.raises(ValueError, match="docs must be"):
        lora_reset_(p, v, s, docs=torch.ones(D), keep=4)
    with pytest.raises(ValueError, match="init must be"):
        lora_reset_(p, v, s, docs=torch.ones(D, dtype=torch.bool), keep=4, init=torch.zeros(D, 3))


LAYOUT = LoraLayout(((5, 24, 40), (3, 16, 8)))  # two adapters of odd shapes: numel 5*24+3*16 + 40*5+8*3 = 392


def test_layout_views_cover_the_flat_buffer_once():
    flat = torch.arange(D * LAYOUT.numel, dtype=torch.float32).reshape(D, LAYOUT.numel)
    views = LAYOUT.views(flat)
    seen = torch.cat([t.reshape(D, -1) for pair in views for t in pair][0::2] +
                     [t.reshape(D, -1) for pair in views for t in pair][1::2], dim=1)
    assert torch.equal(seen, flat) and LAYOUT.a_numel == 5 * 24 + 3 * 16 and LAYOUT.numel == 392
    flat = LAYOUT.init(D, generator=torch.Generator().manual_seed(0)).requires_grad_()
    (A0, B0), (A1, B1) = LAYOUT.views(flat)
    assert (B0 == 0).all() and (B1 == 0).all() and A0.abs().max() <= 24 ** -0.5 and A1.abs().max() <= 16 ** -0.5
    assert A0.abs().max() > 0.8 * 24 ** -0.5
    (A0.sum() + 2 * B1.sum()).backward()
    assert flat.grad[:, :120].eq(1).all() and flat.grad[:, LAYOUT.numel - 24:].eq(2).all()
    assert flat.grad.sum() == D * (120 + 2 * 24)


def _torch_adamw(row: torch.Tensor):
    p = row.clone().requires_grad_()
    return p, torch.optim.AdamW([p], lr=OPT["lr"], betas=(0.0, OPT["beta2"]), eps=OPT["eps"],
                                weight_decay=OPT["weight_decay"], foreach=False)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_adamw_step_and_resets_match_torch_adamw_per_document(impl):
    """Six steps; document 1 is reset (A kept) after step 2, documents 0 and 2 after step 4 (fresh A)."""
    gen = torch.Generator().manual_seed(3)
    param = LAYOUT.init(D, generator=gen)
    param[:, LAYOUT.a_numel:] = torch.randn(D, LAYOUT.numel - LAYOUT.a_numel, generator=gen)  # mid-document B
    v = torch.zeros_like(param)
    step = torch.zeros(D, dtype=torch.int32)
    oracle = [_torch_adamw(param[b]) for b in range(D)]
    resets = {2: (torch.tensor([False, True, False]), None),
              4: (torch.tensor([True, False, True]), torch.randn(D, LAYOUT.a_numel, generator=gen))}
    for i in range(1, 7):
        grad = torch.randn(D, LAYOUT.numel, generator=gen)
        grad[:, :7] *= 1e-3  # small gradients, where eps matters
        lora_adamw_step_(param, grad, v, step, impl=impl, **OPT)
        for b, (p, opt) in enumerate(oracle):
            p.grad = grad[b].clone()
            opt.step()
        for b, (p, opt) in enumerate(oracle):
            st = opt.state[p]
            assert step[b].item() == int(st["step"].item())
            torch.testing.assert_close(param[b], p.detach(), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(v[b], st["exp_avg_sq"], atol=1e-7, rtol=1e-5)
        if i in resets:
            docs, init = resets[i]
            before = param.clone()
            lora_reset_(param, v, step, docs=docs, keep=LAYOUT.a_numel, init=init, impl=impl)
            for b in range(D):
                if not docs[b]:
                    assert torch.equal(param[b], before[b])
                    continue
                row = before[b].clone()
                row[LAYOUT.a_numel:] = 0
                if init is not None:
                    row[:LAYOUT.a_numel] = init[b]
                assert torch.equal(param[b], row) and step[b] == 0 and (v[b] == 0).all()
                oracle[b] = _torch_adamw(row)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_adamw_first_step_is_sign_like(impl):
    """With v = 0 and t = 1, v_hat = g^2: the update is lr * g / (|g| + eps), about lr * sign(g)."""
    p, v = torch.zeros(D, 50), torch.zeros(D, 50)
    g = torch.randn(D, 50, generator=torch.Generator().manual_seed(5))
    step = torch.zeros(D, dtype=torch.int64)
    lora_adamw_step_(p, g, v, step, lr=1e-4, beta2=0.99, eps=1e-10, weight_decay=0.5, impl=impl)
    torch.testing.assert_close(p, -1e-4 * g.sign(), atol=1e-9, rtol=1e-5)
    assert step.tolist() == [1] * D


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the interpreter; needs a CUDA GPU")
@pytest.mark.parametrize("base", [True, False], ids=["with_W", "delta_only"])
def test_bf16_on_gpu(base):
    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    Dg, Tg, K, R, N = 5, 300, 512, 80, 256
    x = torch.randn(Dg, Tg, K, generator=g).to(dev, torch.bfloat16)
    A = (torch.randn(Dg, R, K, generator=g) / K ** 0.5).to(dev)
    B = (torch.randn(Dg, N, R, generator=g) / R ** 0.5).to(dev)
    W = (torch.randn(N, K, generator=g) / K ** 0.5).to(dev) if base else None
    dy = torch.randn(Dg, Tg, N, generator=g).to(dev, torch.bfloat16)
    lengths = torch.tensor([300, 1, 0, 129, 64], device=dev)
    got = _run("triton", x, A, B, dy, weight=W, lengths=lengths)
    want = _run("torch", x.float(), A, B, dy.float(), weight=W, lengths=lengths)
    for name, a, b in zip(("y", "dX", "dA", "dB"), got, want):
        assert _rel_rms(a, b) < 2e-2, name
    p = torch.randn(Dg, 1000, device=dev)
    grad, v, step = torch.randn_like(p), torch.rand_like(p), torch.full((Dg,), 3, device=dev)
    p2, v2, s2 = p.clone(), v.clone(), step.clone()
    lora_adamw_step_(p, grad, v, step, impl="triton", **OPT)
    lora_adamw_step_(p2, grad, v2, s2, impl="torch", **OPT)
    torch.testing.assert_close(p, p2, atol=1e-6, rtol=1e-5)
    assert math.isclose(float(v.sum()), float(v2.sum()), rel_tol=1e-5)
