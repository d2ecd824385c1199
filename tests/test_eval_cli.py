"""``eval.*`` config keys, ``pgolf eval --mode``, ``pgolf audit`` and the final report's lines per mode."""
import json

import numpy as np
import pytest
import torch

from pgolf.cli import main as cli_main
from pgolf.config import ConfigError, ModelConfig, RunConfig, load_config
from pgolf.data.shards import write_shard
from pgolf.model.gpt import GPT
from pgolf.train.checkpoint import save_checkpoint


def test_eval_config_keys_resolve_and_validate():
    cfg = load_config("demo", sets=["eval.mode=flat,doc", "chunk=32", "eval.window=128", "stride=16"])
    assert cfg.eval_modes() == ["flat", "doc"] and (cfg.eval.chunk, cfg.eval_window(), cfg.eval.stride) == (32, 128, 16)
    assert load_config("demo").eval_window() == load_config("demo").train.seq_len  # window 0: train.seq_len
    assert load_config("demo", file=None, sets=[]).to_dict()["eval"]["mode"] == "flat"
    for bad, match in [("eval.mode=ring", "eval.mode must be a comma-separated list"),
                       ("eval.mode=doc,doc", "distinct modes"),
                       ("eval.mode=sliding eval.stride=300", r"eval.stride=300 must not exceed the window \(256"),
                       ("eval.chunk=0", "eval.chunk must be positive"),
                       ("eval.max_seconds=-1", "eval.max_seconds must be >= 0"),
                       ("eval.windows=3", "unknown config key 'eval.windows'")]:
        with pytest.raises(ConfigError, match=match):
            load_config("demo", sets=bad.split())
    assert load_config("demo", sets=["eval.stride=300"]).eval.stride == 300  # flat does not use the stride


@pytest.fixture(scope="module")
def checkpoint_and_val(tmp_path_factory, sp1024_path):
    """A small random model over the official 1024-piece vocabulary and a validation shard of
    documents (BOS + ids) from it."""
    out = tmp_path_factory.mktemp("evalcli")
    cfg = RunConfig()
    cfg.model = ModelConfig(vocab_size=1024, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    save_checkpoint(out / "checkpoint.pt", {"model": model.state_dict(), "config": cfg.to_dict(), "step": 0})
    gen = np.random.default_rng(0)
    docs = [np.concatenate([[1], gen.integers(3, 1024, gen.integers(10, 90))]) for _ in range(12)]
    write_shard(out / "val_000000.bin", np.concatenate(docs).astype(np.uint16))
    common = ["--preset", "demo", "--val-glob", str(out / "val_*.bin"), "--tokenizer", str(sp1024_path),
              "--set", "train.seq_len=64", "--set", "train.val_batch_size=512",
              "--set", "data.verify_manifest=false", "--checkpoint",
              str(out / "checkpoint.pt")]
    return out, common


def _scores(out: str) -> dict[str, float]:
    return {line.split()[0][5:]: float(line.split("val_bpb:")[1].split()[0])
            for line in out.splitlines() if line.startswith("mode:")}


def test_eval_command_scores_every_mode(checkpoint_and_val, capsys, tmp_path):
    _, common = checkpoint_and_val
    assert cli_main(["eval", *common, "--mode", "flat,sliding,doc", "--stride", "16", "--chunk", "8",
                     "--per-token-out", str(tmp_path / "tok.tsv")]) == 0
    out = capsys.readouterr().out
    scores = _scores(out)
    assert set(scores) == {"flat", "sliding", "doc"} and len(set(scores.values())) == 3
    for mode in scores:
        assert f"eval_{mode} tokens:" in out and "warmup:" in out and "fallback_tokens:0" in out
        lines = (tmp_path / f"tok.tsv.{mode}").read_text().splitlines()
        assert lines[0] == "position\ttarget\tnll\tbytes\tseq"
    # the same flags through --set give the same numbers
    assert cli_main(["eval", *common, "--set", "eval.mode=sliding", "--set", "eval.stride=16"]) == 0
    assert _scores(capsys.readouterr().out)["sliding"] == scores["sliding"]


def test_pack_rows_flag_packs_and_keeps_the_score(checkpoint_and_val, capsys, monkeypatch):
    """``--pack-rows`` (eval.pack_rows=true) reaches the schedule of ``pgolf eval`` and ``pgolf
    audit``; the doc score stays (per-token agreement is tests/test_eval_packed.py's)."""
    from pgolf.eval import engine

    _, common = checkpoint_and_val
    packs, build = [], engine.build_schedule
    monkeypatch.setattr(engine, "build_schedule", lambda plan, **kw: packs.append(kw["pack"]) or build(plan, **kw))
    assert cli_main(["eval", *common, "--mode", "doc", "--chunk", "8"]) == 0
    plain = _scores(capsys.readouterr().out)["doc"]
    assert set(packs) == {False}
    assert cli_main(["eval", *common, "--mode", "doc", "--chunk", "8", "--pack-rows"]) == 0
    assert _scores(capsys.readouterr().out)["doc"] == pytest.approx(plain, rel=1e-6, abs=0)
    assert packs[-1] is True
    assert load_config("demo", sets=["eval.pack_rows=true"]).eval.pack_rows is True
    packs.clear()
    rc = cli_main(["audit", *common, "--mode", "doc", "--chunk", "8", "--positions", "3", "--max-tokens", "400",
                   "--pack-rows"])
    out = capsys.readouterr().out
    assert rc == 0 and "verdict: LEGAL" in out, out
    assert packs and all(packs)


def test_eval_command_bad_mode_is_a_config_error(checkpoint_and_val, capsys):
    _, common = checkpoint_and_val
    assert cli_main(["eval", *common, "--mode", "doc", "--chunk", "100"]) == 2
    assert "eval.chunk=100 must not exceed the window (64" in capsys.readouterr().err


def test_audit_command_passes_the_plain_model(checkpoint_and_val, capsys, tmp_path):
    _, common = checkpoint_and_val
    rc = cli_main(["audit", *common, "--mode", "doc,sliding", "--chunk", "8", "--stride", "16", "--positions", "3",
                   "--max-tokens", "400", "--json", str(tmp_path / "audit.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "causality            PASS" in out and out.count("verdict: LEGAL") == 2
    reports = json.loads((tmp_path / "audit.json").read_text())
    assert [r["mode"] for r in reports] == ["doc", "sliding"] and all(r["passed"] for r in reports)


@pytest.mark.slow
def test_final_report_has_one_line_per_mode(tmp_path, capsys):
    from pgolf.data.build import build_embedded_dataset
    from pgolf.pipeline import run_training

    data = tmp_path / "data"
    build_embedded_dataset(data, vocab_size=512, num_val_docs=20, max_docs=200, progress=False)
    sets = {"data.train_glob": f"{data}/train_*.bin", "data.val_glob": f"{data}/val_*.bin",
            "data.tokenizer": f"{data}/tokenizer.model", "data.embedded_default": "false",
            "model.num_layers": 2, "model.model_dim": 32, "model.num_heads": 2, "model.num_kv_heads": 1,
            "train.seq_len": 32, "train.train_batch_tokens": 256, "train.micro_batch_tokens": 256,
            "train.iterations": 3, "train.val_loss_every": 0, "train.val_batch_size": 2048,
            "train.max_wallclock_seconds": 0, "train.warmdown_iters": 1, "train.kernels": "torch",
            "train.run_dir": str(tmp_path / "run"), "eval.mode": "flat,sliding,doc", "eval.stride": 8,
            "eval.chunk": 16}
    result = run_training(load_config("demo", sets=[f"{k}={v}" for k, v in sets.items()]), echo=True)
    out = capsys.readouterr().out
    for mode in ("flat", "sliding", "doc"):
        line = next(x for x in out.splitlines() if x.startswith(f"final_zlib_roundtrip_{mode}_exact "))
        assert f"val_bpb:{result['val_bpb_' + mode]:.8f}" in line
        assert f"eval_{mode} tokens:{result['val_tokens']} " in out
    lines = {x.split(" ")[0]: x.split(" ", 1)[1] for x in out.splitlines() if "_exact " in x}
    assert lines["final_zlib_roundtrip_exact"] == lines["final_zlib_roundtrip_flat_exact"]
    assert result["val_bpb"] == result["val_bpb_flat"] and result["eval_mode"] == "flat"


@pytest.mark.parametrize("flag, value, message", [
    ("--max-tokens", "-100", "argument --max-tokens: must be a whole number >= 0, got '-100'"),
    ("--positions", "0", "argument --positions: must be a whole number >= 1, got '0'"),
    ("--positions", "-2", "argument --positions: must be a whole number >= 1, got '-2'"),
    ("--seed", "-1", "argument --seed: must be a whole number >= 0, got '-1'"),
    ("--tolerance", "nan", "argument --tolerance: must be a finite number >= 0.0, got 'nan'"),
    ("--tolerance", "-1", "argument --tolerance: must be a finite number >= 0.0, got '-1'"),
])
def test_audit_flags_out_of_range_are_refused_naming_the_flag(checkpoint_and_val, capsys, flag, value, message):
    _, common = checkpoint_and_val
    with pytest.raises(SystemExit) as e:
        cli_main(["audit", *common, flag, value])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_eval_bos_id_outside_the_vocabulary_is_a_config_error(checkpoint_and_val, capsys):
    _, common = checkpoint_and_val
    assert cli_main(["eval", *common, "--mode", "doc", "--chunk", "8", "--set", "eval.bos_id=99999"]) == 2
    assert "eval.bos_id=99999 must be a token id below model.vocab_size" in capsys.readouterr().err


def test_per_token_out_that_is_a_folder_is_refused_before_scoring(checkpoint_and_val, capsys, tmp_path, monkeypatch):
    from pgolf.eval import modes

    _, common = checkpoint_and_val
    monkeypatch.setattr(modes, "evaluate_modes", lambda *a, **k: pytest.fail("scored before refusing"))
    assert cli_main(["eval", *common, "--per-token-out", str(tmp_path)]) == 1
    assert f"--per-token-out {tmp_path} is a folder; give a file name" in capsys.readouterr().err
    assert cli_main(["audit", *common, "--json", str(tmp_path)]) == 1
    assert f"--json {tmp_path} is a folder; give a file name" in capsys.readouterr().err


@pytest.mark.parametrize("environ, message", [
    ({"WORLD_SIZE": "abc", "RANK": "0"}, "environment variable WORLD_SIZE='abc' must be a whole number >= 1"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "environment variable RANK='2' must be a whole number 0..1"),
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "x"}, "environment variable LOCAL_RANK='x' must be a whole number"),
])
def test_bad_torchrun_variables_are_named(checkpoint_and_val, capsys, monkeypatch, environ, message):
    from pgolf.util.device import DistEnv

    _, common = checkpoint_and_val
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli_main(["eval", *common]) == 1
    assert message in capsys.readouterr().err
    assert DistEnv.from_environ({"WORLD_SIZE": "2", "RANK": "1"}) == DistEnv(1, 2, 0)


def test_eval_refuses_shards_the_manifest_lists_as_training(tiny_data, tmp_path, capsys):
    """Training refuses a train glob that matches validation shards; eval refuses the mirror case."""
    cfg = RunConfig()
    cfg.model = ModelConfig(vocab_size=512, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1)
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": GPT(cfg.model).state_dict(), "config": cfg.to_dict(),
                                                 "step": 0})
    rc = cli_main(["eval", "--preset", "demo", "--checkpoint", str(tmp_path / "checkpoint.pt"),
                   "--tokenizer", str(tiny_data / "tokenizer.model"), "--val-glob", str(tiny_data / "train_*.bin")])
    err = capsys.readouterr().err
    assert rc == 1 and "train_000000.bin is a training shard (its manifest says so)" in err, err
