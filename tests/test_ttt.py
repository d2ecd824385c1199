"""``pgolf.eval.ttt``: score-first per-document LoRA TTT as a predictor of the engine.

A tiny GPT (width 32, two layers, vocabulary 40) on ten random documents keeps every run to
seconds; the Triton comparison runs the kernels under the interpreter (slow, so a smaller set).
"""
import dataclasses

import numpy as np
import pytest
import torch

from pgolf.config import ConfigError, ModelConfig, RunConfig, TTTConfig
from pgolf.eval.audit import audit
from pgolf.eval.engine import evaluate_geometry, make_batch
from pgolf.eval.geometry import Doc
from pgolf.eval.predictor import ChunkBatch, PlainModel
from pgolf.eval.ttt import LoraTTT, make_ttt
from pgolf.model.gpt import GPT
from test_eval_cli import checkpoint_and_val  # noqa: F401  (the fixture: a checkpoint and a validation shard)

V, BOS, CHUNK, WINDOW, LANES = 40, 1, 8, 16, 4
CPU = torch.device("cpu")
BASE = TTTConfig(rank=4, alpha=8.0, lr=1e-2, impl="torch")


def tiny_model() -> GPT:
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=V, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return m.eval()


def stream(docs: int = 10, seed: int = 1, longest: int = 60) -> torch.Tensor:
    gen = np.random.default_rng(seed)
    parts = [np.concatenate([[BOS], gen.integers(2, V, gen.integers(5, longest))]) for _ in range(docs)]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def toks():
    return stream()


def run(predictor, toks, **kw):
    plan = Doc(CHUNK, WINDOW, BOS).plan(toks)
    return evaluate_geometry(plan, predictor, toks, byte_counts=np.ones(len(toks), np.int64), record=True,
                             batch_lanes=LANES, **kw)


def ttt(model, toks, cfg=BASE, cls=LoraTTT, **kw):
    plan = Doc(CHUNK, WINDOW, BOS).plan(toks)
    p = make_ttt(model, cfg, plan, CPU, batch_docs=LANES, window=WINDOW, **kw)
    p.__class__ = cls
    return p


class AdaptivePlain(PlainModel):
    """The plain model under the adaptive schedule (one chunk per row, the same batches as TTT)."""

    stateless = False


def test_optimizer_state_is_half_of_adamws(model, toks):
    """The TTT optimiser state pgolf allocates (``v`` and a step per document, beta1 = 0) against
    torch's AdamW state on the same parameters (exp_avg, exp_avg_sq, step)."""
    p = ttt(model, toks)
    assert p.v.shape == p.flat.shape and p.step.shape == (p.flat.shape[0],)
    ours = sum(t.numel() * t.element_size() for t in (p.v, p.step))
    flat = p.flat.detach().clone().requires_grad_()
    opt = torch.optim.AdamW([flat], lr=1e-4, betas=(0.0, 0.99))
    flat.grad = torch.randn_like(flat)
    opt.step()
    adamw = sum(t.numel() * t.element_size() for t in opt.state[flat].values())
    params = flat.numel() * flat.element_size()
    assert ours <= 0.5 * adamw + p.step.numel() * p.step.element_size()
    assert (params + ours) / (params + adamw) < 2 / 3 + 1e-3  # parameters and state: a third less


def test_lr_zero_equals_the_plain_model(model, toks):
    zero = run(ttt(model, toks, dataclasses.replace(BASE, lr=0.0)), toks).record.nll[1:]
    same_schedule = run(AdaptivePlain(model, CPU), toks).record.nll[1:]
    assert np.array_equal(zero, same_schedule)  # bit for bit: the hooks add exact zeros, the step changes nothing
    doc = run(PlainModel(model, CPU), toks).record.nll[1:]  # other batch shapes: float rounding only
    assert np.abs(zero - doc).max() < 1e-5
    adapted = run(ttt(model, toks), toks).record.nll[1:]
    assert np.abs(adapted - doc).max() > 1e-3  # and with a learning rate it does adapt


@pytest.mark.parametrize("place", ["q", "k", "v", "o", "mlp", "head"])
def test_every_place_changes_the_scores(model, toks, place):
    p = ttt(model, toks, dataclasses.replace(BASE, places=place))
    plan = Doc(CHUNK, WINDOW, BOS).plan(toks)
    step = p.schedule.steps[p.schedule.groups[p.my_groups[0]][0]]
    batch = make_batch(step, toks, p.schedule.seq, plan.stop - plan.start, CPU)
    before = p.log_probs(batch).detach()
    with torch.no_grad():
        p.flat.normal_(std=0.3)
    assert (p.log_probs(batch).detach() - before).abs().max() > 1e-4


def test_the_model_is_unchanged_and_gets_no_gradients(model, toks):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(ttt(model, toks, dataclasses.replace(BASE, phases=2, phase_docs=6, phase_chunk_tokens=64)), toks)
    run(ttt(model, toks), toks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_last_chunk_is_scored_never_trained(model, toks):
    """A one-chunk document never trains: its adapters stay at B = 0 whatever the learning rate."""
    short = torch.tensor([BOS, 5, 6, 7, BOS, 8, 9, 10, 11], dtype=torch.int64)
    p = ttt(model, short, dataclasses.replace(BASE, lr=1.0))
    seen = []
    inner = p._train

    def spy(batch, nll):
        inner(batch, nll)
        seen.append(int(p.step.sum()))

    p._train = spy
    run(p, short)
    assert seen and max(seen) == 0


@pytest.mark.slow
def test_kernels_agree_with_the_reference(model):
    """Triton kernels (interpreter, fp32) against the pure-torch reference over a whole small set with TTT on:
    per-token scores within 2e-5 nats, and the per-step training losses (each chunk's mean NLL) within 2e-5."""
    small = stream(docs=4, seed=3, longest=24)
    cfg = dataclasses.replace(BASE, places="q,v,o,mlp,head", lr=3e-2)
    ref = run(ttt(model, small, dataclasses.replace(cfg, impl="torch")), small).record
    tri = run(ttt(model, small, dataclasses.replace(cfg, impl="triton")), small).record
    assert np.array_equal(ref.count, tri.count)
    assert np.nanmax(np.abs(ref.nll - tri.nll)) < 2e-5
    scored = ref.count > 0
    loss_ref = np.bincount(ref.seq[scored], ref.nll[scored]) / np.bincount(ref.seq[scored])
    loss_tri = np.bincount(tri.seq[scored], tri.nll[scored]) / np.bincount(tri.seq[scored])
    assert np.abs(loss_ref - loss_tri).max() < 2e-5
    plain = run(PlainModel(model, CPU), small).record
    assert np.nanmax(np.abs(ref.nll - plain.nll)) > 1e-3  # TTT was on


@pytest.mark.parametrize("phases", [0, 2])
def test_audit_passes(model, toks, phases):
    cfg = dataclasses.replace(BASE, phases=phases, phase_docs=6, phase_chunk_tokens=48)
    plan_of = Doc(CHUNK, WINDOW, BOS)
    probe = ttt(model, toks, cfg)
    assert len(probe.phase_after) == phases
    report = audit(lambda: ttt(model, toks, cfg), toks, None, plan_of, byte_counts=np.ones(len(toks), np.int64),
                   num_positions=4, num_normalisation=8, bos_id=BOS, batch_lanes=LANES)
    assert report.passed, report.table()


class AdaptBeforeScore(LoraTTT):
    """Illegal: trains on the chunk (its inputs hold its targets but the last) before scoring it."""

    def log_probs(self, batch: ChunkBatch) -> torch.Tensor:
        lp = self._forward(batch, self._slots(batch))[0]
        inputs = batch.inputs[batch.rows, (batch.cols + 1).clamp(max=batch.inputs.shape[1] - 1)]
        self._train(batch, -lp.gather(1, inputs[:, None]).squeeze(1))
        return super().log_probs(batch)


class MultiEpoch(LoraTTT):
    """Illegal: at a group's first chunk, one whole epoch of training over its documents' chunks (from the
    validation stream), then the scoring epoch: the last epoch's scores are kept."""

    tokens: torch.Tensor

    def log_probs(self, batch: ChunkBatch) -> torch.Tensor:
        g = self.current_group()
        if self.steps_left == len(self.schedule.groups[g]) and getattr(self, "_done", None) != g:
            self._done = g
            sizes = self.plan.stop - self.plan.start
            for s in self.schedule.groups[g]:
                b = make_batch(self.schedule.steps[s], self.tokens, self.schedule.seq, sizes, self.device)
                lp = self._forward(b, self._slots(b))[0]
                self._train(b, -lp.gather(1, self.tokens[b.positions][:, None]).squeeze(1))
        return super().log_probs(batch)


@pytest.mark.slow
@pytest.mark.parametrize("mutant", [AdaptBeforeScore, MultiEpoch])
def test_illegal_variants_fail_the_audit(model, toks, mutant):
    def make():
        p = ttt(model, toks, cls=mutant)
        p.tokens = current["tokens"]
        return p

    current = {"tokens": toks}
    plan_of = Doc(CHUNK, WINDOW, BOS)

    def geometry(t):
        current["tokens"] = t  # the mutant reads the stream of the run it is in
        return plan_of.plan(t)

    report = audit(make, toks, None, geometry, byte_counts=np.ones(len(toks), np.int64), num_positions=4,
                   num_normalisation=8, bos_id=BOS, batch_lanes=LANES)
    assert not report.passed
    assert set(report.failed()) & {"causality", "score_before_update"}, report.table()


def test_non_finite_adapters_fall_back_to_plain_scores(model, toks):
    p = ttt(model, toks, dataclasses.replace(BASE, lr=1e30))
    res = run(p, toks)
    assert np.isfinite(res.score.bpb) and np.isfinite(res.record.nll[1:]).all()
    assert p.counts["nonfinite_docs"] > 0 and p.counts["nonfinite_tokens"] > 0
    plain = run(AdaptivePlain(model, CPU), toks).record.nll
    # a fallen document's later chunks are the plain model's scores exactly
    assert (res.record.nll[1:] == plain[1:]).sum() >= p.counts["nonfinite_tokens"]


def test_time_budget_scores_the_rest_with_the_plain_model(model, toks):
    ticks = iter(range(10_000))
    res = run(ttt(model, toks), toks, max_seconds=5.0, fallback=PlainModel(model, CPU), clock=lambda: next(ticks))
    assert 0 < res.fallback_tokens < res.score.tokens
    assert np.isfinite(res.record.nll[1:]).all()


def test_bad_input_is_named():
    cfg = RunConfig()
    cfg.set("eval.mode", "ttt")
    cfg.set("ttt.rank", cfg.model.model_dim + 1)
    with pytest.raises(ConfigError, match="ttt.rank"):
        cfg.validate()
    cfg = RunConfig()
    cfg.set("ttt.places", "q,gate")
    with pytest.raises(ConfigError, match="unknown: gate"):
        cfg.validate()
    cfg = RunConfig()
    cfg.set("eval.mode", "ttt")
    cfg.set("eval.chunk", cfg.eval_window() + 1)
    with pytest.raises(ConfigError, match="eval.chunk"):
        cfg.validate()
    with pytest.raises(ValueError, match="ttt.rank"):
        ttt(tiny_model(), stream(), dataclasses.replace(BASE, rank=33))


def test_ttt_plus_cache_stacks_the_cache_on_the_adapted_model(model, toks):
    """``ttt+cache``: with lam = 0 the cache passes TTT's scores through exactly; with lam > 0 it
    changes them, and the stack passes the audit (score before update, causality, normalisation)."""
    from pgolf.config import load_config
    from pgolf.eval.modes import predictor_for

    def cfg(lam):
        c = load_config("demo", sets=[f"model.vocab_size={V}", "model.num_layers=2", "model.model_dim=32",
                                      "model.num_heads=2", "model.num_kv_heads=1", f"eval.chunk={CHUNK}",
                                      f"eval.window={WINDOW}", f"eval.batch_docs={LANES}", "eval.mode=ttt+cache",
                                      "ttt.rank=4", "ttt.alpha=8", "ttt.lr=0.01", "ttt.impl=torch",
                                      f"cache.lam={lam}", "cache.window=64"])
        return c
    alone = run(ttt(model, toks), toks).record.nll[1:]
    passthrough = run(predictor_for(cfg(0.0), "ttt+cache", model, CPU, tokens=toks), toks).record.nll[1:]
    assert np.array_equal(alone, passthrough)
    mixed = run(predictor_for(cfg(0.3), "ttt+cache", model, CPU, tokens=toks), toks).record.nll[1:]
    assert np.abs(mixed - alone).max() > 1e-3
    small = stream(docs=4, longest=30)
    plan = Doc(CHUNK, WINDOW, BOS)
    report = audit(lambda: predictor_for(cfg(0.3), "ttt+cache", model, CPU, tokens=small), small, None, plan,
                   byte_counts=np.ones(len(small), np.int64), num_positions=3, seed=0, bos_id=BOS, device=CPU,
                   batch_tokens=1 << 12, batch_lanes=LANES)
    assert report.passed, report.table()


def looped_model() -> GPT:
    """Three blocks, block 1 looped once more: the forward runs blocks 0, 1, 1, 2 (four virtual layers)."""
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=V, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2,
                        num_loops=1, loop_start=1, loop_end=1))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return m.eval()


def test_a_looped_block_gets_its_own_adapters_on_every_pass():
    """As the record (one adapter set per virtual layer, RECORD_STACK.md A.2.5): perturbing the adapter of
    the looped block's first pass or of its second changes the scores, each differently."""
    m, toks = looped_model(), stream(docs=6)
    p = ttt(m, toks)
    names = [name for name, *_ in p.sites]
    assert names == [f"{pl}{v}" for v in range(4) for pl in ("q", "k", "v", "o", "mlp")] + ["head"]
    assert p.sites[5][1] is p.sites[10][1] is m.blocks[1].attn.c_q  # virtual layers 1 and 2 share block 1
    zero = run(ttt(m, toks, dataclasses.replace(BASE, lr=0.0)), toks).record.nll[1:]
    assert np.array_equal(zero, run(AdaptivePlain(m, CPU), toks).record.nll[1:])
    plan = Doc(CHUNK, WINDOW, BOS).plan(toks)
    step = p.schedule.steps[p.schedule.groups[p.my_groups[0]][0]]
    batch = make_batch(step, toks, p.schedule.seq, plan.stop - plan.start, CPU)
    base = p.log_probs(batch).detach()
    changed = []
    for v in (1, 2):
        with torch.no_grad():
            p.flat.zero_()
            for t in p.layout.views(p.flat)[names.index(f"q{v}")]:  # A and B of the pass-v query adapter only
                t.normal_(std=0.3)
        changed.append(p.log_probs(batch).detach())
        assert (changed[-1] - base).abs().max() > 1e-4, v
    assert (changed[0] - changed[1]).abs().max() > 1e-4
    adapted = run(ttt(m, toks), toks)
    assert np.isfinite(adapted.score.bpb) and np.abs(adapted.record.nll[1:] - zero).max() > 1e-3
    m.set_looping(False)  # the predictor was built for the looped order
    with pytest.raises(RuntimeError, match="set_looping"):
        p.log_probs(batch)


def test_eval_command_scores_doc_and_ttt_with_phases_from_the_command_line(checkpoint_and_val, capsys):
    """``pgolf eval --mode doc,ttt --set ttt.*``: both modes scored, TTT below the plain model's bpb here
    (tiny random model), its phases run as configured and reported with the fallbacks."""
    from pgolf.cli import main as cli_main

    _, common = checkpoint_and_val
    ttt_sets = ["ttt.rank=4", "ttt.alpha=8", "ttt.lr=0.01", "ttt.impl=torch", "ttt.phases=2", "ttt.phase_docs=6",
                "ttt.phase_chunk_tokens=128", "eval.batch_docs=4"]
    assert cli_main(["eval", *common, "--mode", "doc,ttt", "--chunk", "8",
                     *[a for s in ttt_sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    scores = {line.split()[0][5:]: float(line.split("val_bpb:")[1].split()[0])
              for line in out.splitlines() if line.startswith("mode:")}
    assert set(scores) == {"doc", "ttt"} and scores["ttt"] < scores["doc"]
    ttt_line = next(line for line in out.splitlines() if line.startswith("eval_ttt "))
    assert " phases:2 " in ttt_line and " phases_cancelled:0" in ttt_line and "nonfinite_docs:0" in ttt_line
