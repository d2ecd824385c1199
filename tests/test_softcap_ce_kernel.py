"""Fused softcapped cross-entropy: Triton kernels (CPU interpreter) against the reference and F.cross_entropy."""
import math

import pytest
import torch
import torch.nn.functional as F

from triton_kernels._dispatch import interpreter_enabled
from triton_kernels.softcap_ce import (ce_tiles, kernels, ops, softcap_ce_bwd_triton, softcap_ce_fwd_triton,
                                       softcap_ce_reference, softcap_cross_entropy)

SOFTCAPS = [30.0, 50.0, None]  # c <= FIXED_MAX_SOFTCAP (fixed shift), above it (running max), none


def _inputs(shape, vocab, dtype=torch.float32, scale=8.0, seed=0, ignore=(), ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g) * scale).to(dtype)
    targets = torch.randint(0, vocab, shape, generator=g)
    targets.view(-1)[list(ignore)] = ignore_index
    return logits, targets


def _capped64(logits, softcap):
    z = logits.double()
    return z if not softcap else softcap * torch.tanh(z / softcap)


def _oracle(logits, targets, softcap, ignore_index=-100):
    """Per-token loss and lse of ``F.cross_entropy(c tanh(l / c))`` in float64, and their gradient function."""
    leaf = logits.detach().double().requires_grad_()
    z = _capped64(leaf, softcap)
    loss = F.cross_entropy(z.flatten(0, -2), targets.flatten(), reduction="none", ignore_index=ignore_index)
    return leaf, loss.view(targets.shape), torch.logsumexp(z, dim=-1)


def _rel_err(a, b):
    """Max abs error relative to max |b| (the one error metric of these tests)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _run(impl, logits, targets, dloss, dlse, **kw):
    leaf = logits.detach().clone().requires_grad_()
    loss, lse = softcap_cross_entropy(leaf, targets, reduction="none", return_lse=True, impl=impl, **kw)
    (grad,) = torch.autograd.grad((loss, lse), leaf, (dloss, dlse))
    return loss, lse, grad


@pytest.mark.parametrize("vocab", [97, 1000, 1031])
@pytest.mark.parametrize("softcap", SOFTCAPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_values_and_gradients_match_f_cross_entropy(vocab, softcap, dtype):
    shape = (3, 5)  # 15 rows, two leading dims; token 4 ignored
    logits, targets = _inputs(shape, vocab, dtype, scale=20.0, ignore=[4])
    g = torch.Generator().manual_seed(1)
    dloss, dlse = torch.randn(shape, generator=g), 0.3 * torch.randn(shape, generator=g)
    loss, lse, grad = _run("triton", logits, targets, dloss, dlse, softcap=softcap)
    assert loss.dtype == lse.dtype == torch.float32 and grad.dtype == dtype
    assert loss.shape == lse.shape == shape and grad.shape == logits.shape
    leaf, want_loss, want_lse = _oracle(logits, targets, softcap)
    (want_grad,) = torch.autograd.grad((want_loss, want_lse), leaf, (dloss.double(), dlse.double()))
    torch.testing.assert_close(loss.double(), want_loss, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-6)
    assert loss.view(-1)[4] == 0
    assert _rel_err(grad, want_grad) < (1e-5 if dtype == torch.float32 else 1e-3)
    # the torch path is the same function
    ref = _run("torch", logits, targets, dloss, dlse, softcap=softcap)
    for got, want in zip((loss, lse, grad), ref):
        assert _rel_err(got, want) < (1e-5 if dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("vocab,block_v", [(97, 16), (97, 256), (130, 64), (1, 16)])
@pytest.mark.parametrize("softcap", SOFTCAPS)
def test_every_column_block_split(vocab, block_v, softcap):
    """Several blocks with a partial last one, one block wider than the row, a one-class row."""
    logits, targets = _inputs((7,), vocab, scale=20.0, ignore=[2])
    c = 0.0 if softcap is None else softcap
    loss, lse = softcap_ce_fwd_triton(logits, targets, softcap=c, ignore_index=-100, block_v=block_v)
    want_loss, want_lse = softcap_ce_reference(logits, targets, softcap=softcap)
    torch.testing.assert_close(loss, want_loss, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(lse, want_lse, atol=2e-5, rtol=1e-6)
    dloss, dlse = torch.randn(7), torch.randn(7)
    grad = softcap_ce_bwd_triton(logits, targets, lse, dloss, dlse, softcap=c, ignore_index=-100, block_v=block_v)
    leaf = logits.clone().requires_grad_()
    (want,) = torch.autograd.grad(softcap_ce_reference(leaf, targets, softcap=softcap), leaf, (dloss, dlse))
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-5)


def test_interpreter_tiles_split_the_test_rows():
    """The shapes above span several blocks with the interpreter's tile, and the GPU's covers a row of 1024."""
    assert ce_tiles(1031, on_gpu=False)["BLOCK_V"] < 1000
    assert ce_tiles(1024, on_gpu=True)["BLOCK_V"] == 1024 and ce_tiles(8192, on_gpu=True)["BLOCK_V"] == 1024


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_reductions_and_ignore_index_match_f_cross_entropy(reduction, impl):
    logits, targets = _inputs((2, 9), 61, ignore=[0, 5, 17], ignore_index=7)
    leaf = logits.clone().requires_grad_()
    loss = softcap_cross_entropy(leaf, targets, reduction=reduction, ignore_index=7, impl=impl)
    ref_leaf = logits.clone().requires_grad_()
    want = F.cross_entropy((30 * torch.tanh(ref_leaf / 30)).flatten(0, 1), targets.flatten(), ignore_index=7,
                           reduction=reduction)
    torch.testing.assert_close(loss, want.view_as(loss), atol=1e-5, rtol=1e-6)
    dout = torch.randn_like(loss)
    (grad,) = torch.autograd.grad(loss, leaf, dout)
    (want_grad,) = torch.autograd.grad(want.view_as(loss), ref_leaf, dout)
    torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-5)
    assert (grad.view(-1, 61)[[0, 5, 17]] == 0).all(), "an ignored token gets no gradient"


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_ignore_index_may_be_a_class_and_all_ignored_mean_is_nan(impl):
    logits, targets = _inputs((6,), 20)
    targets[:] = torch.tensor([3, 3, 0, 19, 3, 5])
    loss = softcap_cross_entropy(logits, targets, ignore_index=3, reduction="none", impl=impl)
    assert (loss[[0, 1, 4]] == 0).all() and (loss[[2, 3, 5]] > 0).all()
    mean = softcap_cross_entropy(logits, torch.full((6,), 3), ignore_index=3, impl=impl)
    assert math.isnan(mean.item()) and math.isnan(F.cross_entropy(logits, torch.full((6,), 3), ignore_index=3).item())


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_saturated_logits_stay_finite(impl):
    """+-1e4 logits: the softcap saturates at +-c with zero derivative; no NaN, no inf."""
    logits, targets = _inputs((8,), 97, scale=1e4)
    logits[0], logits[1, :50] = 1e4, -1e4
    targets[1] = 3
    dloss, dlse = torch.randn(8), torch.randn(8)
    loss, lse, grad = _run(impl, logits, targets, dloss, dlse, softcap=30.0)
    leaf, want_loss, want_lse = _oracle(logits, targets, 30.0)
    (want_grad,) = torch.autograd.grad((want_loss, want_lse), leaf, (dloss.double(), dlse.double()))
    assert torch.isfinite(loss).all() and torch.isfinite(lse).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), want_loss, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse[0], torch.tensor(30 + math.log(97)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("softcap", [ops.FIXED_MAX_SOFTCAP, 60.0])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_every_logit_at_minus_c_does_not_underflow(softcap, impl):
    """All z = -c: exp(z - c) = exp(-2c). The fixed-shift sum must hold it at the largest c that uses it;
    above that the running max must take over (exp(-120) is 0 in float32)."""
    logits = torch.full((3, 97), -1e4)
    targets = torch.tensor([0, 50, 96])
    loss, lse = softcap_cross_entropy(logits, targets, softcap=softcap, reduction="none", return_lse=True, impl=impl)
    torch.testing.assert_close(lse, torch.full((3,), -softcap + math.log(97)), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, torch.full((3,), math.log(97)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_large_logits_without_softcap_do_not_overflow(dtype, impl):
    logits, targets = _inputs((9,), 1031, scale=1e4)
    logits = logits.clamp(-6e4, 6e4).to(dtype)  # up to the float16 range (65504)
    dloss, dlse = torch.randn(9), torch.randn(9)
    loss, lse, grad = _run(impl, logits, targets, dloss, dlse, softcap=None)
    leaf, want_loss, want_lse = _oracle(logits, targets, None)
    (want_grad,) = torch.autograd.grad((want_loss, want_lse), leaf, (dloss.double(), dlse.double()))
    assert torch.isfinite(loss).all() and torch.isfinite(lse).all() and torch.isfinite(grad).all()
    assert loss.max() > 1e3  # the logits really are large
    torch.testing.assert_close(loss.double(), want_loss, atol=0, rtol=1e-6)
    torch.testing.assert_close(lse.double(), want_lse, atol=0, rtol=1e-6)
    assert _rel_err(grad, want_grad) < (1e-6 if dtype == torch.float32 else 1e-3)


def test_bfloat16_forward_in_the_interpreter():
    """bf16 loads are exact in the interpreter (its float32 -> bf16 stores are not: gradients are GPU-tested)."""
    logits, targets = _inputs((11,), 257, torch.bfloat16, scale=20.0, ignore=[1])
    loss, lse = softcap_ce_fwd_triton(logits, targets, softcap=30.0, ignore_index=-100)
    want_loss, want_lse = softcap_ce_reference(logits, targets)
    torch.testing.assert_close(loss, want_loss, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(lse, want_lse, atol=2e-5, rtol=1e-6)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_unchecked_out_of_range_target_gives_nan_not_a_bad_read(impl):
    logits, targets = _inputs((5,), 33)
    targets[1], targets[3] = 33, -7
    leaf = logits.clone().requires_grad_()
    loss = softcap_cross_entropy(leaf, targets, reduction="none", check_targets=False, impl=impl)
    assert torch.isnan(loss[[1, 3]]).all() and torch.isfinite(loss[[0, 2, 4]]).all()
    (grad,) = torch.autograd.grad(loss, leaf, torch.ones(5))
    assert torch.isfinite(grad).all() and (grad[[1, 3]] == 0).all()
    assert math.isnan(softcap_cross_entropy(logits, targets, check_targets=False, impl=impl).item())


def test_backward_saves_raw_logits_only_and_launches_once_per_pass(monkeypatch):
    """No [N, V] tensor but the input logits is kept for backward (the capped logits are never stored);
    one forward launch, one backward launch."""
    launches = {"fwd": 0, "bwd": 0}

    class Counter:
        def __init__(self, kernel, key):
            self.kernel, self.key = kernel, key

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches[self.key] += 1
                return self.kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(kernels, "_softcap_ce_fwd_kernel", Counter(kernels._softcap_ce_fwd_kernel, "fwd"))
    monkeypatch.setattr(kernels, "_softcap_ce_bwd_kernel", Counter(kernels._softcap_ce_bwd_kernel, "bwd"))
    logits = _inputs((4, 6), 150, torch.float16)[0].requires_grad_()
    targets = _inputs((4, 6), 150)[1]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = softcap_cross_entropy(logits, targets, impl="triton")
    assert launches == {"fwd": 1, "bwd": 0}
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert big and all(t.dtype == torch.float16 and t.data_ptr() == logits.data_ptr() for t in big), \
        [(t.dtype, tuple(t.shape)) for t in big]
    loss.backward()
    assert launches == {"fwd": 1, "bwd": 1}


def test_custom_op_passes_opcheck():
    logits, targets = _inputs((9,), 70, ignore=[3])
    torch.library.opcheck(ops.softcap_ce_op, (logits.requires_grad_(), targets, 30.0, -100))
    half, targets = _inputs((5,), 40, torch.float16)
    torch.library.opcheck(ops.softcap_ce_op, (half.requires_grad_(), targets, 0.0, 2))


def test_triton_path_compiles_fullgraph_and_matches_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")

    def loss_fn(logits, targets):
        return softcap_cross_entropy(logits, targets, softcap=30.0, impl="triton")

    compiled = torch.compile(loss_fn, backend=counter, fullgraph=True)
    logits, targets = _inputs((2, 7), 90, ignore=[5])
    eager_leaf, comp_leaf = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    eager = loss_fn(eager_leaf, targets)
    got = compiled(comp_leaf, targets)
    eager.backward()
    got.backward()
    assert counter.frame_count == 1
    torch.testing.assert_close(got, eager, atol=0, rtol=0)
    torch.testing.assert_close(comp_leaf.grad, eager_leaf.grad, atol=0, rtol=0)


def test_bad_inputs_raise_clear_errors(monkeypatch):
    logits, targets = _inputs((4,), 10)
    bad = targets.clone()
    bad[2] = 10
    for impl in ("triton", "torch"):
        with pytest.raises(ValueError, match=r"targets must be in \[0, 10\).*e\.g\. 10"):
            softcap_cross_entropy(logits, bad, impl=impl)
        with pytest.raises(ValueError, match="e.g. -1"):
            softcap_cross_entropy(logits, torch.tensor([0, -1, 2, 3]), impl=impl)
    with pytest.raises(ValueError, match="targets must have the shape"):
        softcap_cross_entropy(logits, targets[:3])
    with pytest.raises(ValueError, match="targets must have the shape"):
        softcap_cross_entropy(logits[None], targets)
    for c in (math.inf, -math.inf, math.nan, -1.0):
        with pytest.raises(ValueError, match="softcap must be a finite number"):
            softcap_cross_entropy(logits, targets, softcap=c)
    for c in ("30", True, torch.tensor(30.0)):
        with pytest.raises(TypeError, match="softcap must be a finite number"):
            softcap_cross_entropy(logits, targets, softcap=c)
    with pytest.raises(ValueError, match="reduction must be one of"):
        softcap_cross_entropy(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="impl must be one of"):
        softcap_cross_entropy(logits, targets, impl="cuda")
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        softcap_cross_entropy(logits, targets, ignore_index=-100.0)
    with pytest.raises(ValueError, match="V >= 1"):
        softcap_cross_entropy(torch.zeros(4, 0), targets)
    with pytest.raises(TypeError, match="targets must be an int64"):
        softcap_cross_entropy(logits, targets.int())
    with pytest.raises(TypeError, match="logits must be a float32"):
        softcap_cross_entropy(logits.double(), targets)
    with pytest.raises(ValueError, match="targets is on meta"):
        softcap_cross_entropy(logits, targets.to("meta"), check_targets=False)
    with pytest.raises(ValueError, match="rows must be contiguous"):
        softcap_ce_fwd_triton(torch.randn(10, 4).T, targets, softcap=30.0, ignore_index=-100)
    for c in (math.inf, math.nan, -30.0):
        with pytest.raises(ValueError, match="softcap must be finite and >= 0"):
            softcap_ce_fwd_triton(logits, targets, softcap=c, ignore_index=-100)
    with pytest.raises(ValueError, match="block_v must be a power of two"):
        softcap_ce_fwd_triton(logits, targets, softcap=30.0, ignore_index=-100, block_v=48)
    lse = torch.zeros(4)
    with pytest.raises(ValueError, match="dloss must be a contiguous float32"):
        softcap_ce_bwd_triton(logits, targets, lse, torch.zeros(4).half(), lse, softcap=30.0, ignore_index=-100)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        softcap_cross_entropy(logits, targets, impl="triton")


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_empty_batch(impl):
    logits, targets = torch.zeros(0, 3, 12, requires_grad=True), torch.zeros(0, 3, dtype=torch.int64)
    loss = softcap_cross_entropy(logits, targets, reduction="sum", impl=impl)
    loss.backward()
    assert loss.item() == 0 and logits.grad.shape == logits.shape


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or interpreter_enabled(),
                                reason="needs a CUDA GPU with TRITON_INTERPRET=0 (bf16 stores round in the "
                                       "interpreter by truncation)")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("vocab", [1024, 8192, 1031])
@pytest.mark.parametrize("softcap", SOFTCAPS)
def test_gpu_bf16_matches_reference(vocab, softcap):
    logits, targets = _inputs((4, 300), vocab, torch.bfloat16, scale=20.0, ignore=[7, 100])
    logits, targets = logits.cuda(), targets.cuda()
    dloss = torch.randn(4, 300, device="cuda")
    dlse = torch.randn(4, 300, device="cuda")
    loss, lse, grad = _run("triton", logits, targets, dloss, dlse, softcap=softcap)
    want = _run("torch", logits, targets, dloss, dlse, softcap=softcap)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, want[0], atol=5e-5, rtol=1e-6)
    torch.testing.assert_close(lse, want[1], atol=5e-5, rtol=1e-6)
    assert _rel_err(grad, want[2]) < 1e-2
