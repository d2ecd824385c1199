"""Learning-rate and momentum schedules, and the official optimiser split."""
import pytest
import torch

from pgolf.config import ModelConfig, load_config
from pgolf.model.gpt import GPT
from pgolf.optim.muon import Muon
from pgolf.optim.optimizers import Optimizers
from pgolf.optim.schedule import lr_multiplier, muon_momentum


def test_step_warmdown_is_linear_over_the_last_iterations():
    kw = dict(iterations=100, warmdown_iters=20, max_wallclock_seconds=0)
    assert lr_multiplier(0, 0.0, **kw) == 1.0
    assert lr_multiplier(79, 0.0, **kw) == 1.0
    assert lr_multiplier(80, 0.0, **kw) == pytest.approx(1.0)
    assert lr_multiplier(90, 0.0, **kw) == pytest.approx(0.5)
    assert lr_multiplier(99, 0.0, **kw) == pytest.approx(0.05)
    assert lr_multiplier(50, 0.0, iterations=100, warmdown_iters=0, max_wallclock_seconds=0) == 1.0


def test_wallclock_warmdown_follows_remaining_time():
    # 10 steps took 10 s (1 s/step); warmdown of 20 steps = 20 s before a 100 s cap.
    kw = dict(iterations=10**6, warmdown_iters=20, max_wallclock_seconds=100.0)
    assert lr_multiplier(10, 10.0, **kw) == 1.0
    assert lr_multiplier(85, 85.0, **kw) == pytest.approx(15 / 20)
    assert lr_multiplier(99, 99.0, **kw) == pytest.approx(1 / 20)
    assert lr_multiplier(120, 120.0, **kw) == 0.0


def test_muon_momentum_warms_up_linearly():
    o = load_config("baseline").optim
    assert muon_momentum(0, o) == pytest.approx(0.85)
    assert muon_momentum(250, o) == pytest.approx(0.90)
    assert muon_momentum(500, o) == pytest.approx(0.95)
    assert muon_momentum(10_000, o) == pytest.approx(0.95)


def test_official_split_and_schedule_reach_every_group():
    cfg = load_config("baseline", sets=["model.tie_embeddings=false", "train.iterations=100",
                                        "train.warmdown_iters=50", "train.max_wallclock_seconds=0"])
    cfg.model = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1,
                            tie_embeddings=False)
    model = GPT(cfg.model)
    opts = Optimizers(model, cfg.optim, cfg.train)
    assert [type(o) for o in opts.all] == [torch.optim.Adam, torch.optim.Adam, Muon, torch.optim.Adam]
    lrs = {id(p): g["lr"] for o in opts.all for g in o.param_groups for p in g["params"]}
    assert lrs[id(model.tok_emb.weight)] == cfg.optim.embed_lr  # untied: embed_lr
    assert lrs[id(model.lm_head.weight)] == cfg.optim.head_lr
    assert lrs[id(model.blocks[0].attn.c_q.weight)] == cfg.optim.matrix_lr
    assert lrs[id(model.blocks[0].attn_scale)] == cfg.optim.scalar_lr
    assert len(lrs) == len(list(model.parameters()))
    mul = opts.schedule(75, 0.0)
    assert mul == pytest.approx(0.5)
    after = {id(p): g["lr"] for o in opts.all for g in o.param_groups for p in g["params"]}
    assert after == pytest.approx({k: 0.5 * lr for k, lr in lrs.items()})  # every group of every optimiser
    assert opts.muon.param_groups[0]["lr"] == pytest.approx(cfg.optim.matrix_lr * 0.5)
    assert opts.muon.param_groups[0]["momentum"] == pytest.approx(muon_momentum(75, cfg.optim))
