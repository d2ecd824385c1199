"""Each benchmark's check accepts correct contenders at the dtypes and reduction lengths of its GPU
run. The tiny smoke cases run in float32, so without this a bf16 tolerance mistake would only show
on a GPU -- as a FAILING baseline that is never timed."""
import functools

import torch

from benchmarks import bench_fake_quant as fq_bench
from benchmarks import bench_newton_schulz as ns_bench
from benchmarks import bench_softcap_ce as ce_bench
from triton_kernels import fake_quant as fq
from triton_kernels._dispatch import triton_unavailable


def test_fake_quant_check_accepts_bf16_contenders_at_full_reduction_lengths():
    for k, n in ((2048, 64), (512, 2048)):  # the longest K and the widest N of the full cases
        x, w, dy = fq_bench._make(256, k, n, torch.bfloat16)(torch.device("cpu"), 0)
        ref = fq_bench.reference(x, w, dy)
        for contender in (fq_bench.plain_linear, fq_bench.torch_eager):
            assert fq_bench.check(contender(x, w, dy), ref) is None, (contender.__name__, k, n)
        # the Triton path's arithmetic: bf16 fq(W), torch.mm forward / dx, float32-accumulated dW * g
        scale = fq.row_scales_reference(w, bits=fq_bench.BITS)
        wq = fq.fake_quant_reference(w, scale, fq_bench.BITS).bfloat16()
        dw = (dy.float().t() @ x.detach().float()) * fq.fake_quant_grad_reference(w, scale, fq_bench.BITS)
        assert fq_bench.check((torch.mm(x.detach(), wq.t()), torch.mm(dy, wq), dw), ref) is None
        wrong = (torch.mm(x.detach(), wq.t()), torch.mm(dy, wq), dw * 1.05)
        assert "dW" in fq_bench.check(wrong, ref)


def test_fake_quant_contenders_quantise_the_weight_on_every_call(monkeypatch):
    """A timed call is a whole QAT step: no contender gets the previous call's fq(W) from the cache."""
    computed = []
    real = fq.ops._fq_weight
    monkeypatch.setattr(fq.ops, "_fq_weight", lambda *a: computed.append(a[-1]) or real(*a))
    x, w, dy = fq_bench._make(16, 48, 40, torch.float32)(torch.device("cpu"), 0)
    contenders = [fq_bench.torch_eager] + ([] if triton_unavailable() else [fq_bench.pgolf_triton])
    for contender in contenders:
        for _ in range(3):
            contender(x, w, dy)
    assert computed == [impl for impl in ("torch", "triton")[:len(contenders)] for _ in range(3)]


def test_newton_schulz_check_accepts_bf16_updates_at_record_shapes():
    banks = [(1, 2048, 512), (2, 256, 512)]
    (inputs,) = ns_bench._case("record_part", banks).make_inputs(torch.device("cpu"), 0)
    ref = ns_bench.reference(inputs)
    orthogonalise = functools.partial(ns_bench.newton_schulz_reference, steps=ns_bench.STEPS)
    bf16 = [orthogonalise((G + ns_bench.MOMENTUM * M).bfloat16()) * ns_bench._scale(*P.shape[1:])
            for P, G, M in inputs]
    assert ns_bench.check(bf16, ref) is None
    assert "relative error" in ns_bench.check([u * 1.1 for u in bf16], ref)


def test_softcap_ce_check_accepts_bf16_contenders_at_the_record_vocabulary():
    logits, targets = ce_bench._make(8, 8192, torch.bfloat16)(torch.device("cpu"), 0)
    ref = ce_bench.reference(logits, targets)
    contenders = [ce_bench.torch_eager]
    if triton_unavailable(logits) is None:  # the Triton path under the interpreter, bf16 stores truncated
        contenders.append(ce_bench.pgolf_triton)
    for contender in contenders:
        assert ce_bench.check(contender(logits, targets), ref) is None, contender.__name__
    loss, grad = ce_bench.torch_eager(logits, targets)
    uncapped = torch.autograd.grad(torch.nn.functional.cross_entropy(logits.float(), targets), logits)[0]
    assert "grad" in ce_bench.check((loss, uncapped), ref), "a gradient without the softcap's derivative"
    assert "loss" in ce_bench.check((loss * 1.01, grad), ref)


def test_softcap_ce_baseline_is_the_models_own_torch_loss():
    """The speedups are against what a run with ``model.loss_impl=torch`` computes, bit for bit."""
    from pgolf.model.loss import softcapped_cross_entropy

    logits, targets = ce_bench._make(8, 1024, torch.bfloat16)(torch.device("cpu"), 0)
    loss, grad = ce_bench.torch_eager(logits, targets)
    raw = logits.detach().clone().requires_grad_()
    model_loss = softcapped_cross_entropy(raw[None], targets[None], cap=ce_bench.SOFTCAP, impl="torch")
    (model_grad,) = torch.autograd.grad(model_loss, raw)
    assert torch.equal(loss, model_loss) and torch.equal(grad, model_grad)
