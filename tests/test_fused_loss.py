"""``model.loss_impl``: the training and scoring loss through the fused softcapped CE kernel
(``triton_kernels.softcap_ce``, the interpreter on a CPU) or through torch, chosen by the config."""
import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ConfigError, ModelConfig, load_config
from pgolf.config.resume import resume_differences
from pgolf.model.gpt import GPT
from pgolf.optim.optimizers import Optimizers
from pgolf.pipeline import run_training
from pgolf.submit.script import plan_bundle
from triton_kernels.softcap_ce import ops as ce_ops
from _tiny import train_steps

TINY = dict(vocab_size=200, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)
RECORD_TINY_SHAPE = ["model.vocab_size=200", "model.num_layers=4", "model.model_dim=32", "model.num_heads=2",
                     "model.num_kv_heads=1", "model.rope_dims=8", "model.xsa_last_n=4", "model.loop_start=1",
                     "model.loop_end=2", "model.parallel_start_layer=3", "model.max_segment=0"]


@pytest.fixture
def kernel_launches(monkeypatch):
    """Counts of the softcap CE kernels' forward and backward launches (the custom op calls the
    launchers through the ``ops`` module, so a spy there sees every launch)."""
    calls = {"fwd": 0, "bwd": 0}
    fwd, bwd = ce_ops.softcap_ce_fwd_triton, ce_ops.softcap_ce_bwd_triton

    def spy_fwd(*args, **kwargs):
        calls["fwd"] += 1
        return fwd(*args, **kwargs)

    def spy_bwd(*args, **kwargs):
        calls["bwd"] += 1
        return bwd(*args, **kwargs)

    monkeypatch.setattr(ce_ops, "softcap_ce_fwd_triton", spy_fwd)
    monkeypatch.setattr(ce_ops, "softcap_ce_bwd_triton", spy_bwd)
    return calls


def batch(vocab: int, seed: int = 0, B: int = 2, T: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab, (B, T + 1), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def randomised(cfg: ModelConfig) -> GPT:
    """A model whose zero-initialised projections are random too, so every parameter gets a gradient."""
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("impl, interpret, launches", [
    ("torch", "1", 0), ("fused", "1", 1), ("auto", "1", 1), ("auto", "0", 0)])
def test_the_kernel_runs_exactly_when_the_option_says(monkeypatch, kernel_launches, impl, interpret, launches):
    """Training loss forward + backward and the scoring NLL: the kernel launches once per call with
    ``fused`` (and ``auto`` where Triton can run: here the interpreter), never with ``torch``."""
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    model = randomised(ModelConfig(**TINY, loss_impl=impl))
    x, y = batch(TINY["vocab_size"])
    model(x, y).backward()
    assert kernel_launches == {"fwd": launches, "bwd": launches}
    with torch.no_grad():
        model.token_nll(x, y)
    assert kernel_launches == {"fwd": 2 * launches, "bwd": launches}


def test_both_paths_give_the_same_loss_nll_and_gradients(kernel_launches):
    """fp32: the fused kernel and the torch path agree to float rounding in the loss, the per-token
    NLL and every parameter's gradient."""
    x, y = batch(TINY["vocab_size"])
    out = {}
    for impl in ("torch", "fused"):
        model = randomised(ModelConfig(**TINY, loss_impl=impl))
        loss = model(x, y)
        loss.backward()
        with torch.no_grad():
            nll = model.token_nll(x, y)
        out[impl] = loss.detach(), nll, {n: p.grad for n, p in model.named_parameters()}
    assert kernel_launches["fwd"] == 2
    (l_t, nll_t, g_t), (l_f, nll_f, g_f) = out["torch"], out["fused"]
    torch.testing.assert_close(l_f, l_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(nll_f, nll_t, rtol=1e-5, atol=1e-5)
    assert nll_t.shape == y.shape and torch.allclose(nll_t.mean(), l_t)
    for name in g_t:
        torch.testing.assert_close(g_f[name], g_t[name], rtol=1e-4, atol=1e-6, msg=name)


# Tolerances of the training comparison (fp32 on a CPU, the kernel under the interpreter, measured):
# the losses differ by ~2e-7 relative (rounding of tanh and of the log-sum-exp); Adam's normalised
# update turns that rounding in the tiny gradients of rare embedding rows into weight differences of
# up to ~1.4e-5 after 4 steps (Muon's matrices: ~1.6e-6), while the 4 steps move the weights by ~0.1.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 5e-5


def test_training_steps_with_the_fused_loss_match_the_torch_loss(kernel_launches):
    """Four optimiser steps (Muon + Adam) from the same weights on the same batches: the per-step
    losses and the final weights of the two paths agree within the stated tolerances, and training
    moves both by far more than that."""
    cfg = load_config("demo", sets=[f"model.{k}={v}" for k, v in TINY.items()] + ["train.kernels=torch"])
    losses, weights = {}, {}
    for impl in ("torch", "fused"):
        cfg.model.loss_impl = impl
        model = randomised(cfg.model)
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        opts = Optimizers(model, cfg.optim, cfg.train)
        losses[impl] = train_steps(model, opts, (batch(TINY["vocab_size"], seed=step) for step in range(4)))
        weights[impl] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert kernel_launches == {"fwd": 4, "bwd": 4}
    assert losses["fused"] == pytest.approx(losses["torch"], rel=LOSS_RTOL)
    assert (weights["fused"] - weights["torch"]).abs().max() < WEIGHT_ATOL
    assert (weights["torch"] - start).abs().max() > 1000 * WEIGHT_ATOL
    assert max(abs(a - b) for a, b in zip(losses["torch"], losses["torch"][1:])) > 1000 * LOSS_RTOL


def test_record_preset_enables_the_fused_loss(kernel_launches):
    """The `record` preset asks for the kernel wherever it can run; at a tiny size its model's
    training loss goes through it (the interpreter here, CUDA on the GPU)."""
    assert load_config("record").model.loss_impl == "auto"
    cfg = load_config("record", sets=RECORD_TINY_SHAPE)
    model = GPT(cfg.model)
    x, y = batch(cfg.model.vocab_size)
    model(x, y).backward()
    assert kernel_launches == {"fwd": 1, "bwd": 1}
    assert load_config("baseline").model.loss_impl == "torch" and load_config("record-tiny").model.loss_impl == "torch"


def test_fused_where_triton_cannot_run_is_refused_naming_the_key(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model = GPT(ModelConfig(**TINY, loss_impl="fused"))
    with pytest.raises(ConfigError, match=r"model.loss_impl='fused'.*needs CUDA tensors.*model.loss_impl=auto"):
        model(*batch(TINY["vocab_size"]))


def test_training_refuses_fused_where_triton_cannot_run_before_any_work(monkeypatch, tmp_path):
    """The run stops in its preflight, before data is read or built and before the run folder exists."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cfg = load_config("demo", sets=["model.loss_impl=fused", "train.device=cpu", f"train.run_dir={tmp_path / 'run'}",
                                    f"data.embedded_dir={tmp_path / 'data'}"])
    with pytest.raises(ConfigError, match=r"model.loss_impl='fused'"):
        run_training(cfg, echo=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_loss_impl_is_validated_and_may_change_on_resume():
    with pytest.raises(ConfigError, match="model.loss_impl must be one of torch, fused, auto"):
        load_config("demo", sets=["model.loss_impl=triton"])
    assert resume_differences(load_config("demo").to_dict(),
                              load_config("demo", sets=["model.loss_impl=fused"]).to_dict()) == []


def test_torch_path_is_the_official_order_of_roundings():
    """``torch``: the softcap in the logits' dtype, then fp32 cross-entropy (train_gpt.py), bit for bit."""
    model = randomised(ModelConfig(**TINY)).bfloat16()
    x, y = batch(TINY["vocab_size"])
    with torch.no_grad():
        raw = model.raw_logits(model.hidden_states(x))
        want = F.cross_entropy((30.0 * torch.tanh(raw / 30.0)).float().flatten(0, 1), y.flatten())
        assert torch.equal(model(x, y), want)


def test_a_submission_bundles_the_fused_loss_only_when_it_can_run_it():
    """model.loss_impl=torch leaves the kernel's package out of the bundle; fused (or auto) keeps it,
    its Triton kernels included even when train.kernels=torch leaves out the other kernels."""
    torch_only = plan_bundle(load_config("demo", sets=["train.kernels=torch"])).sources
    fused = plan_bundle(load_config("demo", sets=["train.kernels=torch", "model.loss_impl=fused"])).sources
    package = {"triton_kernels.softcap_ce", "triton_kernels.softcap_ce.ops", "triton_kernels.softcap_ce.kernels"}
    assert package.isdisjoint(torch_only)
    assert package <= set(fused)
    assert "triton_kernels.fake_quant.kernels" not in fused
