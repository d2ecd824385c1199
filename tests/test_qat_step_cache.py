"""QAT's fq(W): once per optimiser step (not per micro-step), and exactly the exporter's weight
under torch.compile with Inductor."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import QuantConfig
from pgolf.model.layers import CastedLinear, QuantEmbedding
from pgolf.quant.qat import enable_qat, set_qat_state
from pgolf.quant.rtn import quantize_tensor
from triton_kernels.fake_quant import STEP_CACHE, fake_quant_linear, fake_quant_weight, kernels, ops
from _launches import LaunchCounter

MICRO_STEPS = 8


class _Tied(nn.Module):
    """A tied embedding (lookup and head) and two linear layers: every QAT path."""

    def __init__(self):
        super().__init__()
        self.emb = QuantEmbedding(32, 16)
        self.up = CastedLinear(16, 32)
        self.down = CastedLinear(32, 16)

    def forward(self, ids):
        w = self.emb.effective_weight()
        h = F.embedding(ids, w)
        h = h + self.down(F.relu(self.up(h)))
        return F.cross_entropy(F.linear(h, w).flatten(0, 1), ids.flatten())


def _train(model, steps, *, recompute):
    """``steps`` optimiser steps of MICRO_STEPS micro-steps; ``recompute`` empties the cache before
    every forward (the old behaviour). Returns the weights."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        set_qat_state(model, active=True)
        for _ in range(MICRO_STEPS):
            if recompute:
                STEP_CACHE.clear()
            (model(torch.randint(0, 32, (2, 8), generator=g)) / MICRO_STEPS).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("rule", ["percentile", "sigma"])
def test_fq_weight_once_per_optimiser_step_and_bit_identical(monkeypatch, rule):
    """8 micro-steps: one weight-kernel launch per linear layer and one scale computation per layer
    (percentile: one torch.quantile sort) per step; the trained weights equal recomputing every time."""
    torch.manual_seed(0)
    qcfg = QuantConfig(bits=6, scale_rule=rule, clip_sigma=3.0, keep_float_max_numel=0)
    models = [_Tied() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for m in models:
        enable_qat(m, qcfg, impl="triton")  # the linear layers run the Triton kernel (interpreter on a CPU)
    counter = LaunchCounter(kernels._fq_weight_kernel)
    monkeypatch.setattr(kernels, "_fq_weight_kernel", counter)
    quantiles = []
    real_quantile = torch.quantile
    monkeypatch.setattr(torch, "quantile", lambda *a, **k: quantiles.append(1) or real_quantile(*a, **k))
    STEP_CACHE.clear()
    cached = _train(models[0], 2, recompute=False)
    assert counter.launches == 2 * 2  # 2 steps x 2 linear layers
    assert len(quantiles) == (2 * 3 if rule == "percentile" else 0)  # + the embedding
    recomputed = _train(models[1], 2, recompute=True)
    assert counter.launches == 4 + 2 * MICRO_STEPS * 2
    assert cached.keys() == recomputed.keys()
    for k in cached:
        assert torch.equal(cached[k], recomputed[k]), k


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_a_plain_call_reuses_fq_w_until_the_weight_changes(monkeypatch, impl):
    """``fake_quant_linear(x, w, bits=6)`` in a user's own loop (``active`` left at True): one fq(W)
    per weight version, and one cache entry, not one per call."""
    STEP_CACHE.clear()
    computed = []
    real = ops._fq_weight
    monkeypatch.setattr(ops, "_fq_weight", lambda *a: computed.append(1) or real(*a))
    w = nn.Parameter(torch.randn(8, 16))
    outs = [fake_quant_linear(torch.randn(4, 16), w, bits=6, impl=impl) for _ in range(3)]
    assert len(computed) == 1 and len(STEP_CACHE._entries) == 1
    with torch.no_grad():
        w.mul_(1.5)
    fake_quant_linear(torch.randn(4, 16), w, bits=6, impl=impl)
    assert len(computed) == 2 and len(STEP_CACHE._entries) == 1  # the new version replaces the old
    assert all(o.shape == (4, 8) for o in outs)


def test_cached_weight_follows_every_write_to_the_weight():
    """A write between forwards (optimiser step, copy_, the QAT switch) recomputes: never a stale fq(W)."""
    STEP_CACHE.clear()
    w = nn.Parameter(torch.randn(8, 16))
    first = fake_quant_weight(w, bits=4)
    assert torch.equal(fake_quant_weight(w, bits=4), first)
    with torch.no_grad():
        w.mul_(1.5)
    assert torch.equal(fake_quant_weight(w, bits=4).detach(), fake_quant_weight(w.detach(), bits=4))
    assert not torch.equal(fake_quant_weight(w, bits=4), first)


def _ulp(x, direction):
    return torch.nextafter(x, torch.full_like(x, direction * float("inf")))


def _sensitive_weight(bits, rule):
    """Rows whose fp16 scale sits on a rounding tie (both directions) and elements whose quotient
    ``w / s`` is an exact half (both parities): a 1-ulp change in the scale's division, the sigma
    reduction or ``w / s`` changes fq(W)."""
    qmax = 2 ** (bits - 1) - 1
    ties = torch.tensor([2049.0 / 2048 * 2 ** -5, 2051.0 / 2048 * 2 ** -5])  # fp16 ties: round down, up
    rows = []
    for t in ties.tolist():
        for parity in (0, 1):
            s16 = float(torch.tensor(t).half())
            row = [(k + 0.5) * s16 * (1 if k % 2 == parity else -1) for k in range(qmax - 1)]
            if rule == "sigma":  # +-a in equal numbers: population std exactly a, mean exactly 0
                row = [t, -t] * 8
            else:
                row = row + [t * qmax] + [0.0] * (16 - len(row) - 1)
            rows.append(row)
    return torch.tensor(rows, dtype=torch.float32), ties, qmax


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["maxabs", "sigma"])
def test_compiled_qat_weight_is_the_exporters_bit_for_bit(monkeypatch, rule):
    """torch.compile with Inductor (CPU) computes exactly the exporter's dequantized weight, on data
    where one ulp anywhere in the quantiser would change it (checked here first), and the quantiser
    stays one opaque custom op in the generated code (Inductor cannot rewrite its division)."""
    from torch._inductor.utils import run_and_get_code

    # Inductor allocates leaf tensors that require grad with torch.empty: conftest's NaN fill cannot run there
    monkeypatch.setattr(torch, "empty", torch._C._VariableFunctions.empty)
    monkeypatch.setattr(torch, "empty_like", torch._C._VariableFunctions.empty_like)
    bits = 6
    w, ties, qmax = _sensitive_weight(bits, rule)
    sigma = float(qmax)  # with std = a, clip = a * qmax: the scale is exactly the fp16 tie
    # the data is sensitive: one ulp up or down in the clip / scale or in w / s changes the result
    for direction in (1, -1):
        assert not torch.equal(_ulp(ties, direction).half(), ties.half())
    s = ties.half().float().repeat_interleave(2)[:, None]
    q = (w / s)[:, :qmax - 1] if rule == "maxabs" else None
    if q is not None:
        for direction in (1, -1):
            assert not torch.equal(torch.round(_ulp(q, direction)), torch.round(q))

    export = quantize_tensor(w, bits=bits, rule=rule, percentile=99.99984, sigma=sigma).dequantize()
    fn = torch.compile(lambda t: fake_quant_weight(t, bits=bits, rule=rule, sigma=sigma), backend="inductor",
                       fullgraph=True)
    got, code = run_and_get_code(fn, w)
    assert torch.equal(got, export)
    assert "triton_kernels.fq_weight" in "".join(code), "the quantiser was inlined into Inductor's code"
