"""The record's training recipe as options (RECORD_STACK.md B.10-B.12): time-based schedule with a
warm-down fraction and a min-LR floor, Muon as the record runs it, per-group AdamW, EMA, local
gradient clipping, the loop switch hook, and bad feature combinations rejected with the key named."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.config import ConfigError, ModelConfig, load_config
from pgolf.model.gpt import GPT
from pgolf.optim.ema import EMA
from pgolf.optim.optimizers import Optimizers
from pgolf.optim.schedule import lr_multiplier, muon_momentum
from _ports import free_port

HERE = Path(__file__).resolve().parent
TINY = ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1)


def test_fraction_schedule_has_the_record_shape():
    t = load_config("record").train
    kw = dict(iterations=t.iterations, warmdown_iters=t.warmdown_iters, max_wallclock_seconds=600.0,
              warmdown_frac=t.warmdown_frac, min_lr=t.min_lr)
    assert lr_multiplier(0, 0.0, **kw) == 1.0
    assert lr_multiplier(500, 0.149 * 600, **kw) == 1.0  # frac < 0.15: no warm-up, flat
    assert lr_multiplier(500, 0.5 * 600, **kw) == pytest.approx(0.5 / 0.85)  # time, not steps, decides
    assert lr_multiplier(10, 0.9 * 600, **kw) == pytest.approx(0.1 / 0.85)
    assert lr_multiplier(10, 0.95 * 600, **kw) == pytest.approx(0.1)  # the floor (reached at frac 0.915)
    no_cap = dict(kw, max_wallclock_seconds=0.0, iterations=100)
    assert lr_multiplier(50, 999.0, **no_cap) == pytest.approx(0.5 / 0.85)  # steps without a cap
    # the floor applies to the official step warm-down as well
    assert lr_multiplier(99, 0.0, iterations=100, warmdown_iters=20, max_wallclock_seconds=0, min_lr=0.2) == 0.2


def test_muon_momentum_ramp_of_the_record():
    o = load_config("record").optim
    assert [muon_momentum(s, o) for s in (0, 750, 1500, 5000)] == pytest.approx([0.92, 0.945, 0.97, 0.97])


def test_muon_step_matches_the_record_formula():
    """One Muon step of the `record` preset against B.10 written out: Nesterov, row normalisation,
    the five Polar Express triples with X / (||X||_F + 1e-7), sqrt(max(1, R/C)), decoupled WD."""
    cfg = load_config("record")
    o = cfg.optim
    model = GPT(TINY)
    opts = Optimizers(model, o, cfg.train)
    w = model.blocks[0].mlp.fc.weight  # [64, 32]: tall, scale sqrt(64/32)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    before = w.detach().clone()
    opts.schedule(0, 0.0)
    torch.nn.utils.clip_grad_norm_(opts.params, o.grad_clip_norm)
    grad = w.grad.clone()  # as Muon sees it after clipping
    opts.muon.step()
    mu, lr = muon_momentum(0, o), o.matrix_lr
    U = grad + mu * grad  # M = G on the first step, Nesterov U = G + mu M
    U = U / U.norm(dim=1, keepdim=True).clamp_min(1e-7)
    X = U.T  # rows > cols: work on the transpose
    X = X / (X.norm() + 1e-7)
    for a, b, c in ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323)):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    expected = before * (1 - lr * 0.095) - lr * 2 ** 0.5 * X.T
    torch.testing.assert_close(w.detach(), expected, atol=2e-6, rtol=1e-5)


def test_adamw_groups_get_their_own_betas_and_decoupled_decay():
    cfg = load_config("record", sets=["optim.embed_betas=0.8,0.9"])
    model = GPT(TINY)
    opts = Optimizers(model, cfg.optim, cfg.train)
    emb, scal = opts.adam_embed.param_groups[0], opts.adam_scalar.param_groups[0]
    assert isinstance(opts.adam_embed, torch.optim.AdamW) and isinstance(opts.adam_scalar, torch.optim.AdamW)
    assert (emb["betas"], emb["weight_decay"]) == ((0.8, 0.9), 0.085)
    assert (scal["betas"], scal["weight_decay"]) == ((0.9, 0.99), 0.02)
    # zero gradient: the Adam term is 0, so one step is pure decoupled decay p <- p (1 - lr wd)
    p = model.tok_emb.weight
    before = p.detach().clone()
    p.grad = torch.zeros_like(p)
    opts.adam_embed.step()
    torch.testing.assert_close(p.detach(), before * (1 - emb["lr"] * 0.085), atol=0, rtol=1e-6)
    base = Optimizers(GPT(TINY), load_config("baseline").optim, cfg.train)
    assert type(base.adam_embed) is torch.optim.Adam  # no decay configured: the official Adam


def test_ema_follows_its_formula_and_replaces_the_weights():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    history = [model.weight.detach().clone()]
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        history.append(model.weight.detach().clone())
        ema.update()
    expected = history[0]
    for w in history[1:]:
        expected = 0.9 * expected + 0.1 * w
    saved = ema.state_dict()
    ema.update()  # a later update must not change a saved state
    assert not torch.equal(saved["shadow"]["weight"], ema.shadow["weight"])
    ema.load_state_dict(saved)
    torch.testing.assert_close(ema.shadow["weight"], expected)
    ema.copy_to_model()
    torch.testing.assert_close(model.weight.detach(), expected)


def test_ema_is_stepped_and_checkpointed_with_the_optimisers():
    cfg = load_config("record-tiny")
    model = GPT(TINY)
    opts = Optimizers(model, cfg.optim, cfg.train)
    assert opts.ema is not None and opts.ema.decay == cfg.optim.ema_decay
    x = torch.randint(0, 64, (2, 16))
    model(x, x).backward()
    state = opts.state_dict()
    opts.step()
    assert not torch.equal(opts.ema.shadow["blocks.0.attn.c_q.weight"], state[-1]["shadow"]["blocks.0.attn.c_q.weight"])
    opts.load_state_dict(state)  # a warm-up rollback or a resume restores the average too
    assert torch.equal(opts.ema.shadow["blocks.0.attn.c_q.weight"], state[-1]["shadow"]["blocks.0.attn.c_q.weight"])
    with pytest.raises(ValueError, match="ema_decay adds one"):
        opts.load_state_dict(state[:-1])


def test_local_gradient_clipping_clips_before_the_rank_average(tmp_path):
    """Two gloo processes with different local gradients: with grad_clip_local the step sees
    mean_r(clip(g_r)), which differs from clip(mean_r(g_r)) (what clipping after DDP gives)."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                           str(HERE / "dist_clip_worker.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    clip = ranks[0]["clip"]

    def clipped(grads):
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        return [g * min(1.0, clip / (norm.item() + 1e-6)) for g in grads]

    local = [clipped(r["local"]) for r in ranks]
    expected = [(a + b) / 2 for a, b in zip(*local)]
    averaged_then_clipped = clipped([(a + b) / 2 for a, b in zip(ranks[0]["local"], ranks[1]["local"])])
    for r in ranks:
        for got, want in zip(r["stepped"], expected):
            torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-5)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(expected, averaged_then_clipped))


def test_loop_hook_switches_at_the_training_fraction():
    from pgolf.pipeline import _loop_hook

    cfg = load_config("record-tiny", sets=["train.max_wallclock_seconds=100"])
    model = GPT(cfg.model)
    hook = _loop_hook(cfg, cfg.train, model)
    assert bool(model.looping)  # constructed for evaluation: looped
    hook(0, 0.0)
    assert not bool(model.looping)
    hook(10, 34.9)
    assert not bool(model.looping)
    hook(11, 35.0)
    assert bool(model.looping)
    assert _loop_hook(load_config("demo"), load_config("demo").train, GPT(load_config("demo").model)) is None


@pytest.mark.parametrize("sets, message", [
    (["model.num_loops=2", "model.loop_start=3", "model.loop_end=9"], "model.loop_start=3 .. model.loop_end=9"),
    (["model.num_loops=1", "model.loop_start=5", "model.loop_end=4"], "model.loop_start=5 .. model.loop_end=4"),
    (["model.xsa_last_n=10"], "model.xsa_last_n=10 must be in 0..model.num_layers (9)"),
    (["model.rope_dims=15"], "model.rope_dims=15 must be even"),
    (["model.rope_dims=80"], "model.rope_dims=80 must be even and in 0..head dim (64)"),
    (["model.parallel_start_layer=9"], "model.parallel_start_layer=9 must be in 1..8"),
    (["model.num_loops=1", "model.loop_start=3", "model.loop_end=5", "model.parallel_start_layer=4"],
     "model.parallel_start_layer=4 must be after the looped range"),
    (["model.max_segment=128"], "model.max_segment=128 needs model.doc_attention=true"),
    (["model.mlp_activation=gelu"], "model.mlp_activation must be one of relu2, leaky_relu2"),
    (["model.init=xavier"], "model.init must be one of baseline, record"),
    (["model.smear_gate=true", "model.gate_window=0"], "model.gate_window=0 must be in 1..model.model_dim"),
    (["optim.embed_betas=0.9"], "optim.embed_betas must be two betas"),
    (["optim.scalar_wd=-1"], "optim.scalar_wd must be >= 0"),
    (["optim.ema_decay=1"], "optim.ema_decay must be in [0, 1)"),
    (["train.warmdown_frac=1.5"], "train.warmdown_frac must be in [0, 1]"),
    (["train.min_lr=1"], "train.min_lr must be in [0, 1)"),
])
def test_impossible_feature_combinations_are_rejected_with_the_key(sets, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("baseline", sets=sets)


def test_record_preset_is_the_record():
    c = load_config("record")
    m, o, t = c.model, c.optim, c.train
    assert (m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads, m.mlp_mult) == (8192, 11, 512, 8, 4, 4)
    assert (m.rope_dims, m.xsa_last_n, m.num_loops, m.loop_start, m.loop_end, m.loop_enable_frac) == (16, 11, 2, 3, 5, 0.35)
    assert (m.parallel_start_layer, m.qk_gain_init, m.attn_gate_scale, m.max_segment) == (8, 5.0, 0.5, 2048)
    assert c.data.tokenizer.endswith("fineweb_8192_bpe.model")
    assert (o.matrix_lr, o.tied_embed_lr, o.scalar_lr, o.muon_weight_decay, o.beta2, o.grad_clip_norm) == \
        (0.026, 0.03, 0.02, 0.095, 0.99, 0.3)
    assert (o.ema_decay, t.warmdown_frac, t.min_lr, t.train_batch_tokens, t.seq_len) == (0.9965, 0.85, 0.1, 786_432, 2048)
