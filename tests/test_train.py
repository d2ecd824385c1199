"""The training loop: end to end, pinned trajectory, resume, torchrun equivalence, failure modes."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _tiny import tiny_sets as shared_tiny_sets
from _tiny import train_steps
from pgolf.train.checkpoint import load_checkpoint
from pgolf.cli import main as cli_main
from pgolf.config import load_config
from pgolf.data.build import build_embedded_dataset
from pgolf.train.runlog import read_metrics
from pgolf.pipeline import run_training
from pgolf.train.loop import TrainingError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_data")
    build_embedded_dataset(out, vocab_size=512, num_val_docs=30, max_docs=300, progress=False)
    return out


def tiny_sets(data: Path, run_dir: Path, **extra) -> list[str]:
    """The shared tiny run (:mod:`_tiny`), 8 steps with validation and a checkpoint every 4."""
    return shared_tiny_sets(data, run_dir, **{"train.iterations": 8, "train.val_loss_every": 4,
                                              "train.checkpoint_every": 4, "train.warmdown_iters": 3,
                                              "optim.muon_momentum_warmup_steps": 4, **extra})


def train_losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]


def test_end_to_end_run_writes_everything_and_learns(tiny_data, tmp_path, capsys):
    cfg = load_config("demo", sets=tiny_sets(tiny_data, tmp_path / "run", **{"train.iterations": 30}))
    result = run_training(cfg, echo=True)
    out = capsys.readouterr().out
    for name in ("config.json", "train.log", "metrics.jsonl", "loss_curve.png", "checkpoint.pt",
                 "model.pgolf", "submission.json"):
        assert (tmp_path / "run" / name).is_file(), name
    sub = json.loads((tmp_path / "run" / "submission.json").read_text())
    assert sub["val_bpb"] == pytest.approx(result["val_bpb"])
    assert sub["bytes_total"] == sub["bytes_code"] + sub["bytes_model"]
    assert sub["bytes_model"] == (tmp_path / "run" / "model.pgolf").stat().st_size
    assert "final_zlib_roundtrip val_loss:" in out and "step:30/30 train_loss:" in out
    assert "quant_gap val_bpb:" in out
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 30 and losses[-1] < losses[0] - 0.5
    assert result["val_bpb"] < result["unigram_bpb"] - 0.05  # learned more than token frequencies
    assert abs(result["quant_gap_bpb"]) < 0.05


# Losses of the first 6 steps of the tiny config, seed 1337, on CPU (torch 2.13). A change to the
# model, the optimiser, the data order or the schedule moves these; update them on purpose only.
PINNED = [6.234583377838135, 6.288181304931641, 6.05692195892334, 6.032754421234131, 5.795858383178711, 5.650521278381348]


def test_fixed_seed_gives_the_pinned_loss_trajectory(tiny_data, tmp_path):
    cfg = load_config("demo", sets=tiny_sets(tiny_data, tmp_path, **{"train.iterations": 6}))
    run_training(cfg, echo=False)
    losses = train_losses(tmp_path)
    assert losses == pytest.approx(PINNED, rel=1e-4, abs=1e-4)


def test_resume_continues_exactly(tiny_data, tmp_path):
    full = load_config("demo", sets=tiny_sets(tiny_data, tmp_path / "full"))
    run_training(full, echo=False)
    half = load_config("demo", sets=tiny_sets(tiny_data, tmp_path / "part", **{"train.iterations": 8}))
    # Interrupt after the step-4 checkpoint by making step 5 blow up, then resume.
    original = torch.nn.Module.__call__
    calls = {"n": 0}

    def failing_call(self, *args, **kwargs):
        if type(self).__name__ == "GPT" and self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    torch.nn.Module.__call__ = failing_call
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(half, echo=False)
    finally:
        torch.nn.Module.__call__ = original
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["step"] == 4
    run_training(half, resume=True, echo=False)
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")  # exact, bit for bit


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    cfg = load_config("demo", sets=tiny_sets(tiny_data, tmp_path))
    from pgolf.model import gpt as model_mod
    real_forward = model_mod.GPT.forward
    calls = {"n": 0}

    def forward(self, x, y):
        calls["n"] += 1
        loss = real_forward(self, x, y)
        return loss * float("nan") if calls["n"] >= 6 else loss

    monkeypatch.setattr(model_mod.GPT, "forward", forward)
    with pytest.raises(TrainingError, match=r"non-finite train loss \(nan\) at step 6.*checkpoint.*intact"):
        run_training(cfg, echo=False)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_wallclock_cap_stops_training_and_still_exports(tiny_data, tmp_path):
    cfg = load_config("demo", sets=tiny_sets(tiny_data, tmp_path, **{
        "train.iterations": 100000, "train.max_wallclock_seconds": 1.0, "train.checkpoint_every": 0,
        "train.val_loss_every": 0}))
    result = run_training(cfg, echo=False)
    assert result["stop_reason"] == "wallclock_cap" and 0 < result["steps"] < 100000
    assert (tmp_path / "submission.json").exists() and (tmp_path / "model.pgolf").exists()


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_resume_finishes(tiny_data, tmp_path, signum):
    sets = tiny_sets(tiny_data, tmp_path, **{"train.iterations": 100000, "train.checkpoint_every": 0})
    cmd = [sys.executable, "-m", "pgolf.cli", "train", "--preset", "demo", *sum((["--set", s] for s in sets), [])]
    proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith("step:3/") or time.time() > deadline:
            break
    proc.send_signal(signum)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signum, rest
    assert "checkpoint saved" in rest
    step = load_checkpoint(tmp_path / "checkpoint.pt")["step"]
    assert step >= 3
    resumed = subprocess.run(cmd[:-2] + ["--set", f"train.iterations={step + 2}", "--resume"], env=_cli_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and f"step:{step + 2}/{step + 2} train_loss" in resumed.stdout


@pytest.mark.distributed
def test_torchrun_two_processes_match_one_process(tiny_data, tmp_path):
    common = tiny_sets(tiny_data, tmp_path / "one", **{"train.iterations": 5, "train.checkpoint_every": 0})
    one = subprocess.run([sys.executable, "-m", "pgolf.cli", "train", "--preset", "demo",
                          *sum((["--set", s] for s in common), [])], env=_cli_env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two_sets = [s.replace(str(tmp_path / "one"), str(tmp_path / "two")) for s in common]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "pgolf.cli", "train", "--preset", "demo", *sum((["--set", s] for s in two_sets), [])],
                         env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world_size:2 grad_accum_steps:1" in two.stdout and "world_size:1 grad_accum_steps:1" in one.stdout
    l1, l2 = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(l1) == len(l2) == 5
    # Same global batch; only the order of floating-point reductions differs.
    assert l2 == pytest.approx(l1, rel=2e-4)


def test_cli_rejects_bad_config_before_any_work(tmp_path, capsys):
    rc = cli_main(["train", "--preset", "demo", "--set", "model.num_heads=3", "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and "must divide model.model_dim" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "data", "config"):
        assert cmd in out


def test_qat_training_export_load_gives_identical_logits(tiny_data, tmp_path):
    """Train with QAT to the end, export, load the artifact: the loaded model's logits equal the
    fake-quantised model's logits bit for bit, so the quantisation gap is exactly zero."""
    from pgolf.artifact.export import load_exported
    from pgolf.model.gpt import GPT
    from pgolf.quant.qat import enable_qat, set_qat_state

    cfg = load_config("demo", sets=tiny_sets(tiny_data, tmp_path, **{
        "train.iterations": 6, "quant.qat_start_frac": 0, "quant.bits": 6, "quant.scale_rule": "sigma",
        "quant.policy": "mlp=5,tok_emb=8", "quant.keep_float_max_numel": 0, "quant.codec": "rans"}))
    result = run_training(cfg, echo=False)
    assert result["quant_gap_bpb"] == 0.0

    trained = GPT(cfg.model)
    trained.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["model"])
    bits = enable_qat(trained, cfg.quant, impl="torch")
    assert sorted(set(bits.values())) == [5, 6, 8] and bits["tok_emb"] == 8  # the policy reached every layer
    set_qat_state(trained, active=True)
    loaded = load_exported(tmp_path / "model.pgolf")
    x = torch.randint(0, cfg.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fake_quant, exported = trained.logits(x), loaded.logits(x)
        set_qat_state(trained, active=False)
        full_precision = trained.logits(x)
    assert torch.equal(fake_quant, exported)
    assert not torch.equal(full_precision, exported)  # quantisation really happened


def test_eval_command_scores_artifact_and_checkpoint_alike(tiny_data, tmp_path, capsys):
    cfg = load_config("demo", sets=tiny_sets(tiny_data, tmp_path, **{"train.iterations": 3}))
    result = run_training(cfg, echo=False)
    common = ["--preset", "demo", "--val-glob", f"{tiny_data}/val_*.bin", "--tokenizer",
              f"{tiny_data}/tokenizer.model", "--set", "train.seq_len=32", "--set", "train.kernels=torch", "--set", "train.val_batch_size=2048"]
    assert cli_main(["eval", "--artifact", str(tmp_path / "model.pgolf"), *common]) == 0
    from_artifact = capsys.readouterr().out
    assert f"val_bpb:{result['val_bpb']:.8f}" in from_artifact  # same score as the training run printed
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "checkpoint.pt"), *common]) == 0
    assert f"val_bpb:{result['pre_export_val_bpb']:.8f}" in capsys.readouterr().out


def test_oversize_artifact_fails_loudly_but_keeps_the_file(tiny_data, tmp_path, monkeypatch):
    from pgolf.artifact import export
    monkeypatch.setattr(export, "SIZE_CAP_BYTES", 1000)
    cfg = load_config("demo", sets=tiny_sets(tiny_data, tmp_path, **{"train.iterations": 2}))
    with pytest.raises(export.OversizeError, match=r"> 1,000; shrink the model or pass --set allow_oversize=1"):
        run_training(cfg, echo=False)
    assert (tmp_path / "model.pgolf").exists() and (tmp_path / "checkpoint.pt").exists()
    allowed = load_config("demo", sets=tiny_sets(tiny_data, tmp_path, **{"train.iterations": 2,
                                                                         "train.allow_oversize": 1}))
    assert run_training(allowed, overwrite=True, echo=False)["bytes_total"] > 1000


def test_an_existing_checkpoint_is_never_overwritten_silently(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"earlier work")
    rc = cli_main(["train", "--preset", "demo", "--run-dir", str(tmp_path)])
    assert rc == 1 and "--resume, or start over with --overwrite" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"earlier work"


@pytest.mark.slow
def test_compiled_training_matches_eager_after_the_warmup_is_undone(tiny_data, tmp_path):
    """torch.compile's warm-up steps (training batches only) are rolled back: the compiled run's
    losses equal the eager run's."""
    losses = {}
    for compiled in (False, True):
        run_dir = tmp_path / str(compiled)
        cfg = load_config("demo", sets=tiny_sets(tiny_data, run_dir, **{
            "train.iterations": 4, "train.compile": compiled, "train.warmup_steps": 2, "train.checkpoint_every": 0}))
        run_training(cfg, echo=False)
        losses[compiled] = train_losses(run_dir)
    assert "warmup_step:2/2" in (tmp_path / "True" / "train.log").read_text()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_triton_kernels_and_torch_references_train_alike(tiny_data):
    """Same seed and batches; Muon's Newton-Schulz and the QAT linear through Triton (the
    interpreter on a CPU) vs their torch references: the per-step losses agree."""
    from pgolf.data.loader import TokenLoader
    from pgolf.model.gpt import GPT
    from pgolf.optim.optimizers import Optimizers
    from pgolf.quant.qat import enable_qat, set_qat_state

    losses = {}
    for kernels in ("torch", "triton"):
        cfg = load_config("demo", sets=tiny_sets(tiny_data, tiny_data / "unused", **{
            "train.kernels": kernels, "quant.bits": 6, "quant.keep_float_max_numel": 0}))
        torch.manual_seed(0)
        model = GPT(cfg.model)
        assert enable_qat(model, cfg.quant, impl=kernels)
        set_qat_state(model, active=True)
        opts = Optimizers(model, cfg.optim, cfg.train)
        loader = TokenLoader(cfg.data.train_glob)
        losses[kernels] = train_steps(model, opts, (
            loader.next_batch(step, global_tokens=256, seq_len=32, grad_accum_steps=1, micro_step=0)
            for step in range(3)))
    assert losses["triton"] == pytest.approx(losses["torch"], rel=1e-4)
    assert losses["torch"][2] < losses["torch"][0]


def test_cli_takes_the_official_environment_names(monkeypatch, capsys):
    monkeypatch.setenv("NUM_LAYERS", "3")
    monkeypatch.setenv("ITERATIONS", "77")
    monkeypatch.setenv("DATA_PATH", "shards/sp1024")
    assert cli_main(["config", "--preset", "baseline"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["num_layers"] == 3 and resolved["train"]["iterations"] == 77
    assert resolved["data"]["val_glob"] == "shards/sp1024/fineweb_val_*.bin"


@pytest.mark.slow
def test_record_tiny_trains_and_its_loss_goes_down(tiny_data, tmp_path):
    """The record-tiny preset (every record feature, EMA, time schedule, loop switch) runs the
    whole job on CPU; its training loss falls and the looped, averaged model is what is scored."""
    sets = [s for s in tiny_sets(tiny_data, tmp_path, **{"train.iterations": 12, "train.val_loss_every": 0,
                                                         "train.checkpoint_every": 0})
            if not s.startswith("model.")]
    cfg = load_config("record-tiny", sets=sets + ["train.train_batch_tokens=1024", "train.micro_batch_tokens=1024",
                                                  "train.seq_len=128", "model.model_dim=48"])
    result = run_training(cfg, echo=False)
    losses = train_losses(tmp_path)
    assert len(losses) == 12 and min(losses[-3:]) < losses[0] - 0.5
    log = (tmp_path / "train.log").read_text()
    assert "ema: the averaged weights" in log
    uniform = math.log2(cfg.model.vocab_size) * result["val_tokens"] / result["val_bytes"]  # a guess of nothing
    assert result["val_bpb"] < uniform - 0.2  # 12 steps learn something, if not yet the unigram (3.81 against 4.47)


def test_gradient_accumulation_uses_every_micro_batch(tiny_data, tmp_path):
    """The same 8 sequences per step as one micro-batch or as 4 (the per_step token order deals
    the same sequences either way): the loss curves agree to float rounding. Stepping on the
    first micro-batch alone, or dropping the 1/accum scale, moves them far beyond that."""
    losses = {}
    for accum in (1, 4):
        run_dir = tmp_path / str(accum)
        cfg = load_config("demo", sets=tiny_sets(tiny_data, run_dir, **{
            "train.iterations": 4, "train.micro_batch_tokens": 256 // accum, "train.checkpoint_every": 0,
            "train.val_loss_every": 0}))
        run_training(cfg, echo=False)
        assert f"grad_accum_steps:{accum}" in (run_dir / "train.log").read_text()
        losses[accum] = train_losses(run_dir)
    assert losses[4] == pytest.approx(losses[1], rel=2e-6)
    assert losses[4][-1] < losses[4][0]


def test_resume_under_a_wallclock_cap_is_exact(tiny_data, tmp_path, monkeypatch):
    """A capped run interrupted after its step-6 checkpoint and resumed: the restored training time
    drives the time-based warm-down and the cap, so the resumed run takes the same steps with the
    same learning rates and stops at the same step. Time is a fake clock that advances 1 s per
    training step (validation and checkpoints take no time), restarted at an unrelated value for
    the resumed process."""
    from types import SimpleNamespace

    from pgolf.train import loop as loop_mod

    clock = {"now": 0.0, "steps": 0, "fail_at": None}
    monkeypatch.setattr(loop_mod, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    real_step = loop_mod.Trainer.train_step

    def timed_step(self, step):
        clock["steps"] += 1
        if clock["steps"] == clock["fail_at"]:
            raise KeyboardInterrupt
        clock["now"] += 1.0
        return real_step(self, step)

    monkeypatch.setattr(loop_mod.Trainer, "train_step", timed_step)
    capped = {"train.iterations": 100, "train.max_wallclock_seconds": 8, "train.warmdown_iters": 4,
              "train.checkpoint_every": 3, "train.val_loss_every": 0}
    full = run_training(load_config("demo", sets=tiny_sets(tiny_data, tmp_path / "full", **capped)), echo=False)
    assert (full["stop_reason"], full["steps"]) == ("wallclock_cap", 8)

    part = load_config("demo", sets=tiny_sets(tiny_data, tmp_path / "part", **capped))
    clock.update(now=0.0, steps=0, fail_at=7)
    with pytest.raises(KeyboardInterrupt):
        run_training(part, echo=False)
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["step"] == 6
    clock.update(now=5000.0, steps=0, fail_at=None)
    resumed = run_training(part, resume=True, echo=False)
    assert (resumed["stop_reason"], resumed["steps"], resumed["train_time_ms"]) == ("wallclock_cap", 8, 8000)
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")
