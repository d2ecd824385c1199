"""``pgolf tune-cache``: the grid is scored on the end of the training stream, the best point is
written into the run's config, and no validation shard is ever read."""
import json

import numpy as np
import pytest
import torch

import pgolf.data.shards as shards
from pgolf.cli import main as cli_main
from pgolf.config import ModelConfig, RunConfig
from pgolf.data.shards import write_shard
from pgolf.eval.tune_cache import held_out_training_tokens, tune_cache
from pgolf.model.gpt import GPT
from pgolf.train.checkpoint import save_checkpoint


@pytest.fixture
def run_dir(tmp_path, sp1024_path):
    cfg = RunConfig()
    cfg.model = ModelConfig(vocab_size=1024, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": GPT(cfg.model).state_dict(), "config": cfg.to_dict(),
                                                 "step": 0})
    (tmp_path / "config.json").write_text(json.dumps({"name": "tiny", "train": {"seq_len": 64}}))
    gen = np.random.default_rng(0)
    motif = gen.integers(3, 1024, 5)
    docs = [np.concatenate([[1], motif, gen.integers(3, 1024, 20), motif]) for _ in range(20)]
    write_shard(tmp_path / "train_000000.bin", gen.integers(3, 1024, 500).astype(np.uint16))
    write_shard(tmp_path / "train_000001.bin", np.concatenate(docs).astype(np.uint16))
    write_shard(tmp_path / "val_000000.bin", np.concatenate(docs).astype(np.uint16))
    return tmp_path, ["--preset", "demo", "--config", str(tmp_path / "config.json"),
                      "--tokenizer", str(sp1024_path), "--set", f"data.train_glob={tmp_path}/train_*.bin",
                      "--set", f"data.val_glob={tmp_path}/val_*.bin", "--set", "eval.chunk=8", "--set", "eval.window=32",
                      "--set", "data.verify_manifest=false", "--checkpoint", str(tmp_path / "checkpoint.pt")]


def test_held_out_slice_is_the_end_of_the_last_training_shard(run_dir):
    d, _ = run_dir
    got = held_out_training_tokens(str(d / "train_*.bin"), 30, vocab_size=1024)
    assert torch.equal(got, torch.from_numpy(shards.read_shard(d / "train_000001.bin")[-31:].astype(np.int64)))
    with pytest.raises(ValueError, match="holds"):
        held_out_training_tokens(str(d / "train_*.bin"), 10**6, vocab_size=1024)


def test_tune_cache_writes_the_best_point_and_never_reads_validation(run_dir, monkeypatch, capsys):
    d, common = run_dir
    opened = []
    real_read = shards.read_shard

    def spy(path, *a, **kw):
        opened.append(str(path))
        return real_read(path, *a, **kw)

    monkeypatch.setattr(shards, "read_shard", spy)
    monkeypatch.setattr("pgolf.eval.tune_cache.read_shard", spy)
    assert cli_main(["tune-cache", *common, "--tokens", "400", "--theta", "1,30", "--lam", "0.05,0.5",
                     "--window", "16,512"]) == 0
    out = capsys.readouterr().out
    assert opened and not any("val_" in p for p in opened), opened
    grid = {line.split(" bpb:")[0]: float(line.split("bpb:")[1])
            for line in out.splitlines() if line.startswith("theta:")}
    assert len(grid) == 8
    for theta in ("1", "30"):  # every point is scored with its own values: lam moves the score
        for window in ("16", "512"):
            low, high = (grid[f"theta:{theta} lam:{lam} window:{window}"] for lam in ("0.05", "0.5"))
            assert low != high, (theta, window)
    best = min(grid, key=grid.get)
    saved = json.loads((d / "config.json").read_text())
    assert saved["name"] == "tiny" and saved["train"] == {"seq_len": 64}  # the rest of the config is kept
    c = saved["cache"]
    assert best == f"theta:{c['theta']:g} lam:{c['lam']:g} window:{c['window']}"
    assert RunConfig.from_dict(saved).validate().cache.window == c["window"]


def test_tune_cache_refuses_a_mode_without_cache(run_dir, capsys):
    _, common = run_dir
    assert cli_main(["tune-cache", *common, "--mode", "doc", "--tokens", "50"]) == 1
    assert "tune-cache scores a cache mode (e.g. cache, flat+cache), got 'doc'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--theta="], "argument --theta: must be a comma-separated list of at least one number, got ''"),
    (["--lam", ","], "argument --lam: must be a comma-separated list of at least one number, got ','"),
    (["--window", "16,x"], "argument --window: must be a comma-separated list of at least one whole number"),
    (["--tokens", "0"], "argument --tokens: must be a whole number >= 1, got '0'"),
])
def test_tune_cache_refuses_bad_flags_naming_them(run_dir, capsys, flags, message):
    _, common = run_dir
    with pytest.raises(SystemExit) as e:
        cli_main(["tune-cache", *common, *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_tune_cache_checks_the_grid_and_out_before_scoring(run_dir, capsys, monkeypatch):
    d, common = run_dir
    monkeypatch.setattr("pgolf.eval.tune_cache.evaluate_geometry", lambda *a, **k: pytest.fail("scored"))
    assert cli_main(["tune-cache", *common, "--tokens", "50", "--theta", "1,-1"]) == 2
    assert "cache.theta must be a finite number > 0, got -1.0" in capsys.readouterr().err
    assert cli_main(["tune-cache", *common, "--tokens", "50", "--out", str(d)]) == 1
    assert f"--out {d} is a folder; give a file name" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one theta, one lam and one window"):
        tune_cache(None, None, None, RunConfig(), "cache", thetas=[], lams=[0.1], windows=[16], device="cpu")
