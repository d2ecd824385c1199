"""Reliability, family 5: no user error ends in a traceback.

Each case answers with one line naming the file or key and what to do, and a non-zero exit.
"""
import errno
import json
import os
from pathlib import Path

import pytest
import torch

from _reliability import assert_clear, pgolf, train
from pgolf.artifact.format import load_artifact, save_artifact


def test_a_run_dir_that_is_a_file_is_refused(tiny_data, tmp_path, reliability):
    (tmp_path / "run").write_text("not a folder")
    assert_clear(train(tiny_data, tmp_path / "run"), r"train.run_dir .*run is a file, not a folder")
    reliability("CLEAR")


def test_a_data_out_that_is_a_file_is_refused(tmp_path, reliability):
    (tmp_path / "a.txt").write_text("some words here")
    (tmp_path / "b.txt").write_text("more words there")
    (tmp_path / "out").write_text("a file")
    answer = pgolf("data", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(tmp_path / "out"),
                   "--train-tokenizer", "--vocab-size", "50", "--no-progress")
    assert_clear(answer, r"output .*out is a file, not a folder; choose another --out")
    reliability("CLEAR")


def test_a_read_only_run_dir_is_refused(tiny_data, tmp_path, reliability, monkeypatch):
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root may write anyway: let the file system answer as it does to a user
        real_mkdir = os.mkdir

        def refusing_mkdir(path, *args, **kwargs):
            if Path(path).is_relative_to(read_only):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)
        monkeypatch.setattr(os, "mkdir", refusing_mkdir)
    assert_clear(train(tiny_data, read_only / "run"), r"Permission denied: .*ro/run")
    assert not (read_only / "run").exists()
    reliability("CLEAR")


def test_a_config_file_that_is_not_json_or_missing_is_refused(tmp_path, reliability):
    (tmp_path / "bad.json").write_text("{'train': 1}")
    assert_clear(pgolf("config", "--config", str(tmp_path / "bad.json")), r"bad.json is not valid JSON")
    assert_clear(pgolf("config", "--config", str(tmp_path / "none.json")), r"none.json does not exist")
    assert_clear(pgolf("config", "--config", str(tmp_path)), r"cannot be read")
    reliability("CLEAR")


def _tampered_artifact(trained, tmp_path, edit):
    run_dir, _ = trained
    art = load_artifact(run_dir / "model.pgolf")
    config = json.loads(json.dumps(art.config))
    edit(config)
    path = tmp_path / "tampered.pgolf"
    save_artifact(path, config=config, tensors=art.tensors, codec="zlib", meta=art.meta)
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["model"].update(num_experts=4), r"has model config keys this pgolf does not know: num_experts"),
    (lambda c: c.pop("model"), r"has no model config; it was not written by pgolf's exporter"),
    (lambda c: c["model"].pop("num_layers"), r"its tensors do not fit the model its config describes"),
    (lambda c: c["model"].update(model_dim=64), r"its tensors do not fit the model its config describes"),
], ids=["unknown key", "no model", "missing key", "wrong shape"])
def test_an_artifact_with_a_bad_config_is_refused(trained, tmp_path, edit, message, reliability):
    answer = pgolf("eval", "--artifact", str(_tampered_artifact(trained, tmp_path, edit)))
    assert_clear(answer, message)
    reliability("CLEAR")


@pytest.mark.parametrize("content", [{"w": torch.ones(2)}, [1, 2, 3], {"model": {}, "step": 1}],
                         ids=["state dict", "list", "partial"])
def test_a_torch_file_that_is_not_a_pgolf_checkpoint_is_refused(tmp_path, content, reliability):
    torch.save(content, tmp_path / "other.pt")
    answer = pgolf("eval", "--checkpoint", str(tmp_path / "other.pt"))
    assert_clear(answer, r"other.pt is not a pgolf training checkpoint \(no model/config/step entries\)")
    reliability("CLEAR")


def test_a_non_pgolf_checkpoint_is_refused_on_resume(tiny_data, tmp_path, reliability):
    (tmp_path / "run").mkdir()
    torch.save({"w": torch.ones(2)}, tmp_path / "run" / "checkpoint.pt")
    answer = train(tiny_data, tmp_path / "run", "--resume")
    assert_clear(answer, r"checkpoint.pt is not a pgolf training checkpoint")
    reliability("CLEAR")


@pytest.mark.parametrize("what", ["checkpoint", "artifact"])
def test_missing_or_garbage_model_files_are_named(tmp_path, what, reliability):
    flag = f"--{what}"
    assert_clear(pgolf("eval", flag, str(tmp_path / "missing")), r"missing")
    (tmp_path / "garbage").write_bytes(b"\x00garbage" * 50)
    assert_clear(pgolf("eval", flag, str(tmp_path / "garbage")), r"garbage")
    reliability("CLEAR")


def test_tokenizer_training_on_an_empty_corpus_is_refused(tmp_path, reliability):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text("   \n\n" if name == "b.txt" else "")
    answer = pgolf("data", *(str(tmp_path / n) for n in ("a.txt", "b.txt", "c.txt")), "--out", str(tmp_path / "out"),
                   "--train-tokenizer", "--vocab-size", "100", "--no-progress")
    assert_clear(answer, r"no text to train a 100-piece tokenizer on: the training documents are empty")
    reliability("CLEAR")


def test_sigint_during_start_up_is_one_line(tiny_data, tmp_path, monkeypatch, reliability):
    from pgolf import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "load_tokenizer", interrupted)
    answer = train(tiny_data, tmp_path / "run")
    assert answer.rc == 130
    assert_clear(answer, r"pgolf: error: interrupted outside the training loop; no score was written")
    reliability("CLEAR")


def test_resume_without_a_checkpoint_is_named(tiny_data, tmp_path, reliability):
    assert_clear(train(tiny_data, tmp_path / "run", "--resume"), r"--resume: no checkpoint at .*checkpoint.pt")
    assert not (tmp_path / "run").exists()
    reliability("CLEAR")


def test_missing_shards_and_tokenizer_are_named(tiny_data, tmp_path, reliability):
    assert_clear(train(tiny_data, tmp_path / "run", **{"data.train_glob": f"{tmp_path}/none_*.bin"}),
                 r"no shard files match '.*none_\*.bin'")
    assert_clear(train(tiny_data, tmp_path / "run", **{"data.tokenizer": f"{tmp_path}/none.model"}),
                 r"tokenizer .*none.model does not exist")
    reliability("CLEAR")
