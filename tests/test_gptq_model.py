"""GPTQ and LQER on a trained model: calibration reads training data only, GPTQ beats round-to-nearest
on the model's own activations, and the exported file reloads to the in-memory quantised model exactly."""
import pytest
import torch

from pgolf.artifact.export import export_model, load_exported
from pgolf.config import ModelConfig, load_config
from pgolf.data.build import build_embedded_dataset
from pgolf.data.loader import TokenLoader
from pgolf.model.gpt import GPT
from pgolf.model.roles import parameter_roles
from pgolf.optim.optimizers import Optimizers
from pgolf.quant.calibrate import collect_hessians
from pgolf.quant.lqer import lqer_factors
from pgolf.quant.qtensor import QTensor
from pgolf.quant.rtn import dequantize_state_dict, quantize_state_dict

SEQ, BATCH = 32, 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-layer width-64 model trained 40 steps on the embedded corpus (train split only)."""
    data = tmp_path_factory.mktemp("gptq_data")
    build_embedded_dataset(data, vocab_size=512, num_val_docs=30, max_docs=300, progress=False)
    cfg = load_config("demo", sets=["model.num_layers=2", "model.model_dim=64", "model.num_heads=2",
                                    "model.num_kv_heads=1", "train.kernels=torch", "train.iterations=40",
                                    "train.warmdown_iters=0", "train.max_wallclock_seconds=0"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opts = Optimizers(model, cfg.optim, cfg.train)
    loader = TokenLoader(f"{data}/train_*.bin")
    for step in range(40):
        opts.zero_grad()
        x, y = loader.next_batch(step, global_tokens=SEQ * BATCH, seq_len=SEQ, grad_accum_steps=1, micro_step=0)
        model(x, y).backward()
        opts.step()
    return model, data


def _train_batches(data, n, start=1000):
    loader = TokenLoader(f"{data}/train_*.bin")
    return [loader.next_batch(start + i, global_tokens=SEQ * BATCH, seq_len=SEQ, grad_accum_steps=1,
                              micro_step=0)[0] for i in range(n)]


QCFG = dict(bits=5, scale_rule="sigma", clip_sigma=3.0, keep_float_max_numel=0)


def test_calibration_reads_no_validation_shard(trained, monkeypatch):
    model, data = trained
    opened = []
    import pgolf.data.loader as loader_mod
    real = loader_mod.shard_token_count
    monkeypatch.setattr(loader_mod, "shard_token_count", lambda path: opened.append(str(path)) or real(path))
    hessians = collect_hessians(model, _train_batches(data, 2), device=torch.device("cpu"))
    assert opened and all("train_" in p for p in opened) and not any("val_" in p for p in opened)
    roles = parameter_roles(model)
    assert set(hessians) == {n for n, r in roles.items() if r in ("matrix", "embed")}
    cols = dict(model.named_parameters())
    for name, h in hessians.items():
        assert h.shape == (cols[name].shape[1],) * 2 and torch.allclose(h, h.T)


def test_hooks_sum_every_call_of_a_layer(trained):
    """A layer called twice per forward (depth recurrence) sums both passes' inputs."""
    model, data = trained
    batch = _train_batches(data, 1)
    once = collect_hessians(model, batch, device=torch.device("cpu"))
    twice = collect_hessians(model, batch + batch, device=torch.device("cpu"))
    for name in once:
        assert torch.allclose(twice[name], 2 * once[name], rtol=1e-5)


def test_gptq_lowers_every_layer_output_error_on_real_activations(trained):
    model, data = trained
    cfg = load_config("demo", sets=[f"quant.{k}={v}" for k, v in QCFG.items()])
    hessians = collect_hessians(model, _train_batches(data, 8), device=torch.device("cpu"))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    roles = parameter_roles(model)
    report = {}
    gptq = quantize_state_dict(state, cfg.quant, roles, hessians=hessians, report=report)
    rtn = quantize_state_dict(state, cfg.quant, roles)
    assert set(report.values()) == {"gptq"}
    held_out = collect_hessians(model, _train_batches(data, 8, start=5000), device=torch.device("cpu"))
    for name, h in held_out.items():
        def err(e):
            d = state[name].double() - e.dequantize().double()
            return float(torch.trace(d @ h.double() @ d.T))
        assert torch.equal(gptq[name].scale, rtn[name].scale)  # same fp16 scales: one quantiser
        assert err(gptq[name]) < err(rtn[name]), name


def test_export_reload_equals_the_in_memory_quantised_model(trained, tmp_path):
    model, data = trained
    cfg = load_config("demo", sets=[f"quant.{k}={v}" for k, v in QCFG.items()] + ["quant.lqer_top_k=2"])
    hessians = collect_hessians(model, _train_batches(data, 4), device=torch.device("cpu"))
    report = export_model(model, cfg.quant, tmp_path / "m.pgolf", hessians=hessians)
    assert set(report.methods.values()) == {"gptq"}
    state = {k: v.detach() for k, v in model.state_dict().items()}
    entries = quantize_state_dict(state, cfg.quant, parameter_roles(model), hessians=hessians)
    assert any(k.endswith(".lqer_a") for k in entries)
    in_memory = GPT(ModelConfig(**model.cfg.__dict__))
    in_memory.load_state_dict(dequantize_state_dict(entries))
    loaded = load_exported(tmp_path / "m.pgolf")
    x = _train_batches(data, 1)[0]
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), in_memory.logits(x))


def test_lqer_lowers_the_error_of_the_corrected_matrices(trained):
    model, _ = trained
    cfg = load_config("demo", sets=[f"quant.{k}={v}" for k, v in QCFG.items()] + ["quant.lqer_top_k=3"])
    state = {k: v.detach() for k, v in model.state_dict().items()}
    entries = quantize_state_dict(state, cfg.quant, parameter_roles(model))
    plain = dequantize_state_dict({k: v for k, v in entries.items() if ".lqer_" not in k})
    corrected = dequantize_state_dict(entries)
    names = [k[: -len(".lqer_a")] for k in entries if k.endswith(".lqer_a")]
    assert 1 <= len(names) <= 3
    for name in names:
        assert isinstance(entries[f"{name}.lqer_a"], QTensor) and entries[f"{name}.lqer_a"].bits == 2
        assert entries[f"{name}.lqer_b"].bits == 4
        before = torch.linalg.norm(state[name] - plain[name])
        after = torch.linalg.norm(state[name] - corrected[name])
        assert after < before
    for name in set(plain) - set(names):
        assert torch.equal(plain[name], corrected[name])


def test_lqer_rank_larger_than_the_matrix_is_refused():
    with pytest.raises(ValueError, match="LQER rank must be in 1..3"):
        lqer_factors(torch.randn(3, 64), 4)


def test_lqer_b_is_stored_in_groups_of_64():
    a_t, b = lqer_factors(torch.randn(48, 128), 4)
    assert a_t.codes.shape == (4, 48) and b.codes.shape == (4 * 128 // 64, 64)
    _, b_odd = lqer_factors(torch.randn(48, 100), 4)
    assert b_odd.codes.shape == (4, 100)


def test_bad_quant_settings_are_rejected_by_the_config():
    from pgolf.config import ConfigError
    for sets, message in ((["quant.method=awq"], "quant.method must be one of rtn, gptq"),
                          (["quant.sigma_policy=attn=-1"], "quant.sigma_policy item"),
                          (["quant.gptq_damp=0"], "quant.gptq_damp must be a positive number"),
                          (["quant.lqer_rank=0"], "quant.lqer_rank must be >= 1")):
        with pytest.raises(ConfigError, match=message):
            load_config("demo", sets=sets)


def test_sigma_policy_picks_k_per_tensor_kind_for_export_and_qat():
    from pgolf.quant.plan import tensor_sigma
    cfg = load_config("demo", sets=["quant.sigma_policy=attn=13,mlp=11.5,tok_emb=14", "quant.clip_sigma=12.85"])
    assert tensor_sigma("blocks.0.attn.c_q.weight", cfg.quant) == 13.0
    assert tensor_sigma("blocks.0.mlp.fc.weight", cfg.quant) == 11.5
    assert tensor_sigma("tok_emb.weight", cfg.quant) == 14.0
    assert tensor_sigma("lm_head.weight", cfg.quant) == 12.85


def _pipeline_sets(data, run_dir, **extra):
    values = {"data.train_glob": f"{data}/train_*.bin", "data.val_glob": f"{data}/val_*.bin",
              "data.tokenizer": f"{data}/tokenizer.model", "data.embedded_default": "false",
              "model.num_layers": 2, "model.model_dim": 32, "model.num_heads": 2, "model.num_kv_heads": 1,
              "train.seq_len": 32, "train.train_batch_tokens": 256, "train.micro_batch_tokens": 256,
              "train.iterations": 6, "train.val_loss_every": 0, "train.val_batch_size": 2048,
              "train.warmdown_iters": 2, "train.kernels": "torch", "train.run_dir": str(run_dir),
              "quant.method": "gptq", "quant.gptq_batches": 2, "quant.keep_float_max_numel": 0,
              "quant.scale_rule": "sigma", "quant.clip_sigma": 3.0, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def test_pipeline_reserves_calibration_time_inside_the_cap(trained, tmp_path):
    from pgolf.pipeline import run_training
    _, data = trained
    cap_s = 120.0
    result = run_training(load_config("demo", sets=_pipeline_sets(data, tmp_path / "run",
                                                                 **{"train.max_wallclock_seconds": cap_s})),
                          echo=False)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "gptq_reserve:" in log and "train_plus_calibration:" in log
    assert result["quant_method"] == "gptq" and result["calibration_ms"] > 0
    assert result["train_time_ms"] + result["calibration_ms"] <= 1000 * cap_s
    assert "0 by round-to-nearest" in log


def test_a_cap_too_small_for_the_calibration_is_refused_before_training(trained, tmp_path):
    from pgolf.pipeline import run_training
    from pgolf.train.loop import TrainingError
    _, data = trained
    cfg = load_config("demo", sets=_pipeline_sets(data, tmp_path / "run", **{"train.max_wallclock_seconds": 1e-4}))
    with pytest.raises(TrainingError, match="leaves no training time"):
        run_training(cfg, echo=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
