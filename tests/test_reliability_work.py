"""Reliability, family 2: no lost work.

Nothing is deleted or overwritten before the new work is known to be valid: ``pgolf data``
stages its build, ``train --overwrite`` validates first, a run directory has one owner at a
time, checkpoints are verified and only ever hold finite weights, and a run that breaks writes
no score.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from _reliability import assert_clear, pgolf, snapshot, train
from pgolf.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pgolf.util.runlock import LOCK_NAME, RunDirLock


@pytest.fixture
def built(tmp_path):
    """A folder holding a finished ``pgolf data`` build (trained tokenizer) and its input."""
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}: " + "words and more words " * 30}) + "\n"
                              for i in range(40)), encoding="utf-8")
    out = tmp_path / "out"
    answer = pgolf("data", str(corpus), "--out", str(out), "--train-tokenizer", "--vocab-size", "300",
                   "--num-val-docs", "4", "--no-progress")
    assert answer.rc == 0, answer.err
    return corpus, out


@pytest.mark.parametrize("fault", ["misspelt input", "bad JSONL line", "empty corpus", "not UTF-8"])
@pytest.mark.parametrize("tokenizer", ["--train-tokenizer", "--tokenizer"])
def test_a_failed_data_build_leaves_the_previous_build_intact(built, tmp_path, fault, tokenizer, reliability):
    corpus, out = built
    before = snapshot(out)
    bad = tmp_path / "bad.jsonl"
    if fault == "bad JSONL line":
        bad.write_text(corpus.read_text() + "{not json\n", encoding="utf-8")
    elif fault == "empty corpus":
        bad.write_text("", encoding="utf-8")
    elif fault == "not UTF-8":
        bad.write_bytes(corpus.read_bytes() + b'{"text": "\xff\xfe"}\n')
    inputs = [str(tmp_path / "typo.jsonl")] if fault == "misspelt input" else [str(bad)]
    how = (["--train-tokenizer", "--vocab-size", "300"] if tokenizer == "--train-tokenizer"
           else ["--tokenizer", str(out / "tokenizer.model")])
    answer = pgolf("data", *inputs, "--out", str(out), *how, "--num-val-docs", "4", "--no-progress")
    assert_clear(answer, r"typo.jsonl: no such file|bad.jsonl:41: invalid JSON|need at least 2 documents|"
                         r"no text to train|not UTF-8")
    assert snapshot(out) == before
    reliability("CLEAR")


def test_a_data_build_failing_midway_leaves_official_shards_without_a_manifest_intact(built, tmp_path, monkeypatch,
                                                                                    reliability):
    """Official-style shards (no manifest) in --out; the build dies writing its second shard."""
    from pgolf.data import build as build_mod

    corpus, out = built
    (out / "manifest.json").unlink()
    before = snapshot(out)
    real, calls = build_mod.write_shard, {"n": 0}

    def failing(path, tokens):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device", str(path))
        return real(path, tokens)

    monkeypatch.setattr(build_mod, "write_shard", failing)
    answer = pgolf("data", str(corpus), "--out", str(out), "--tokenizer", str(out / "tokenizer.model"),
                   "--num-val-docs", "4", "--shard-tokens", "500", "--no-progress")
    assert_clear(answer, r"No space left on device")
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
    reliability("CLEAR")


def test_a_successful_rebuild_replaces_the_previous_build_whole(built, tmp_path, reliability):
    corpus, out = built
    (out / "fineweb_train_000042.bin").write_bytes(b"a stale shard of an older build")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f".pgolf-staging-{int(dead.stdout)}").mkdir()  # what a killed build leaves
    answer = pgolf("data", str(corpus), "--out", str(out), "--tokenizer", str(out / "tokenizer.model"),
                   "--num-val-docs", "5", "--no-progress")
    assert answer.rc == 0, answer.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fineweb_train_000000.bin", "fineweb_val_000000.bin", "manifest.json", "tokenizer.model"]
    assert json.loads((out / "manifest.json").read_text())["validation"]["docs"] == 5
    reliability("FINE")


@pytest.mark.parametrize("typo", [("data.val_glob", "{d}/vall_*.bin"), ("data.tokenizer", "{d}/tokenizer.modle"),
                                  ("model.num_heads", "3"), ("data.train_glob", "{d}/val_*.bin")])
def test_overwrite_validates_everything_before_touching_the_old_run(tiny_data, tmp_path, typo, reliability):
    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir).rc == 0
    before = snapshot(run_dir)
    key, value = typo
    answer = train(tiny_data, run_dir, "--overwrite", **{key: value.format(d=tiny_data)})
    assert_clear(answer, r"no shard files match|tokenizer .* does not exist|must divide model.model_dim|"
                         r"matches both data.train_glob")
    assert snapshot(run_dir) == before
    reliability("CLEAR")


def test_a_second_process_in_a_locked_run_directory_is_refused_naming_the_holder(tiny_data, tmp_path, reliability):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        answer = train(tiny_data, run_dir)
        assert_clear(answer, rf"run directory .*run is in use by pid {os.getpid()} on {socket.gethostname()}, "
                             r"started \d{4}-\d\d-\d\dT")
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
    assert not (run_dir / LOCK_NAME).exists()
    reliability("CLEAR")


def test_a_lock_from_another_host_is_never_taken_over(tiny_data, tmp_path, reliability):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00"}))
    answer = train(tiny_data, run_dir)
    assert_clear(answer, r"in use by pid 1 on elsewhere.*delete the lock file if that job is gone")
    reliability("CLEAR")


def test_a_stale_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tiny_data, tmp_path, reliability):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))
    with pytest.warns(UserWarning, match=rf"taking over the stale lock .* of pid {pid}"):
        answer = train(tiny_data, run_dir)
    assert answer.rc == 0, answer.err
    assert (run_dir / "submission.json").is_file() and not (run_dir / LOCK_NAME).exists()
    reliability("FINE")


def test_a_flipped_byte_in_the_checkpoint_is_refused_on_resume(tiny_data, tmp_path, reliability):
    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 2}).rc == 0
    data = bytearray((run_dir / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (run_dir / "checkpoint.pt").write_bytes(data)
    answer = train(tiny_data, run_dir, "--resume", **{"train.iterations": 4})
    assert_clear(answer, r"checkpoint .*checkpoint.pt is damaged")
    reliability("CLEAR")


def test_every_single_byte_flip_of_a_checkpoint_is_caught_or_harmless(tmp_path, reliability):
    path = tmp_path / "c.pt"
    state = {"model": {"w": torch.randn(16, 16)}, "step": 3, "config": {}}
    save_checkpoint(path, state)
    good = path.read_bytes()
    silent = []
    for i in range(0, len(good), 7):
        flipped = bytearray(good)
        flipped[i] ^= 0x20
        path.write_bytes(flipped)
        try:
            ck = load_checkpoint(path)
        except CheckpointError:
            continue
        if not (torch.equal(ck["model"]["w"], state["model"]["w"]) and ck["step"] == 3):
            silent.append(i)
    assert silent == []
    reliability("CLEAR")


def test_a_blow_up_on_the_last_step_keeps_the_good_checkpoint_and_writes_no_score(tiny_data, tmp_path, monkeypatch,
                                                                              reliability):
    """The last optimiser step turns the weights to NaN while its loss was finite."""
    from pgolf.optim import optimizers as optim_mod

    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 2}).rc == 0  # a good earlier run: artifact + score
    good_artifact = (run_dir / "model.pgolf").read_bytes()
    real_step, calls = optim_mod.Optimizers.step, {"n": 0}

    def step(self):
        real_step(self)
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                self.params[0].fill_(float("nan"))

    monkeypatch.setattr(optim_mod.Optimizers, "step", step)
    answer = train(tiny_data, run_dir, "--overwrite")
    assert_clear(answer, r"the weights hold NaN or inf after step 4 .*the last good checkpoint .* is intact")
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 2
    assert not (run_dir / "submission.json").exists()  # the old score was the old run's: removed, none written
    assert (run_dir / "model.pgolf").read_bytes() == good_artifact
    reliability("CLEAR")


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, reliability):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})
    with pytest.raises(CheckpointError, match=r"not writing .* the weights w hold NaN or inf at step 2; the previous"):
        save_checkpoint(path, {"model": {"w": torch.tensor([1.0, float("inf"), 0.0])}, "step": 2})
    assert load_checkpoint(path)["step"] == 1
    reliability("CLEAR")


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tiny_data, tmp_path,
                                                                                  monkeypatch, reliability):
    from pgolf.train import checkpoint as ck_mod

    run_dir = tmp_path / "run"
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 192 vs 128")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ck_mod.torch, "save", save)
    answer = train(tiny_data, run_dir)
    assert_clear(answer, r"could not write checkpoint .*checkpoint.pt \(\[enforce fail at inline_container.cc:603\] "
                         r"\. unexpected pos 192 vs 128\); the previous one is kept; free disk space")
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 2
    reliability("CLEAR")


def test_a_torn_last_metrics_line_is_cut_on_resume(tiny_data, tmp_path, reliability):
    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 2}).rc == 0
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 3, "train_lo')  # killed mid-write
    answer = train(tiny_data, run_dir, "--resume", **{"train.iterations": 4})
    assert answer.rc == 0, answer.err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3, 4]
    assert "cut a torn last line" in (run_dir / "train.log").read_text()
    reliability("FINE")


def test_a_run_folder_without_a_checkpoint_is_never_trained_over_unasked(tiny_data, tmp_path, reliability):
    """A finished run whose checkpoint was deleted, and a records folder: both refused without
    --overwrite, every file as it was."""
    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 2}).rc == 0
    (run_dir / "checkpoint.pt").unlink()
    before = snapshot(run_dir)
    assert_clear(train(tiny_data, run_dir, **{"train.iterations": 2}),
                 r"already holds config.json, train.log, metrics.jsonl, submission.json, .*model.pgolf.*--overwrite")
    assert snapshot(run_dir) == before
    records = tmp_path / "records"
    records.mkdir()
    (records / "submission.json").write_text("{}")
    (records / "train.log").write_text("the record's log\n")
    before = snapshot(records)
    assert_clear(train(tiny_data, records), r"already holds train.log, submission.json")
    assert snapshot(records) == before
    reliability("CLEAR")


def test_resume_refuses_fewer_iterations_than_the_checkpoint_has_run(tiny_data, tmp_path, reliability):
    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 4}).rc == 0
    before = snapshot(run_dir)
    assert_clear(train(tiny_data, run_dir, "--resume", **{"train.iterations": 2}),
                 r"checkpoint.pt is at step 4, past train.iterations=2; continue with train.iterations >= 4")
    assert snapshot(run_dir) == before
    reliability("CLEAR")


def test_a_resumed_run_that_breaks_leaves_no_report_of_the_old_finish(tiny_data, tmp_path, monkeypatch, reliability):
    """The old submission.json described the export at step 2; once training goes on it would claim
    a finished run that is not there. The old artifact stays."""
    from pgolf.optim import optimizers as optim_mod

    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 2}).rc == 0
    old_artifact = (run_dir / "model.pgolf").read_bytes()
    real_step = optim_mod.Optimizers.step

    def step(self):
        real_step(self)
        with torch.no_grad():
            self.params[0].fill_(float("nan"))

    monkeypatch.setattr(optim_mod.Optimizers, "step", step)
    assert_clear(train(tiny_data, run_dir, "--resume", **{"train.iterations": 4}),
                 r"non-finite .* the last good checkpoint .* is intact")
    assert not (run_dir / "submission.json").exists()
    assert (run_dir / "model.pgolf").read_bytes() == old_artifact
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 2
    reliability("CLEAR")


def test_a_byte_sidecar_of_the_wrong_length_is_refused_before_the_old_run_is_touched(tiny_data, tmp_path,
                                                                                   reliability):
    from pgolf.data.shards import write_shard

    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 2}).rc == 0
    write_shard(tmp_path / "bytes_000000.bin", np.ones(10, np.uint16))
    before = snapshot(run_dir)
    answer = train(tiny_data, run_dir, "--overwrite", **{"train.iterations": 2,
                                                         "data.val_bytes_glob": str(tmp_path / "bytes_*.bin")})
    assert_clear(answer, r"val_bytes_glob .* holds 10 byte counts but the validation split .* holds \d+ tokens")
    assert snapshot(run_dir) == before
    reliability("CLEAR")


def test_a_run_of_the_other_export_scheme_replaces_the_old_artifact(tiny_data, tmp_path, reliability):
    """--overwrite with quant.scheme=official_int8 over a pgolf-scheme run: the new run's
    final_model.int8.ptz, and no model.pgolf of the old run beside it."""
    run_dir = tmp_path / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 2}).rc == 0
    answer = train(tiny_data, run_dir, "--overwrite", **{"train.iterations": 2, "quant.scheme": "official_int8"})
    assert answer.rc == 0, answer.err
    assert (run_dir / "final_model.int8.ptz").is_file() and not (run_dir / "model.pgolf").exists()
    report = json.loads((run_dir / "submission.json").read_text())
    assert report["bytes_model"] == (run_dir / "final_model.int8.ptz").stat().st_size
    reliability("FINE")
