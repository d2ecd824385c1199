"""Reliability, family 3: every value is validated where it enters.

Each of these used to pass validation and then fail late (after a whole training run), mean
something else, or be silently ignored.
"""
import json

import pytest
import torch

from _reliability import assert_clear, pgolf, train

BAD_VALUES = [
    ("optim.matrix_lr=nan", r"optim.matrix_lr must be a finite number, got nan"),
    ("optim.embed_lr=inf", r"optim.embed_lr must be a finite number, got inf"),
    ("optim.scalar_lr=-inf", r"optim.scalar_lr must be a finite number"),
    ("train.max_wallclock_seconds=nan", r"train.max_wallclock_seconds must be a finite number"),
    ("train.max_wallclock_seconds=inf", r"train.max_wallclock_seconds must be a finite number"),
    ("model.logit_softcap=nan", r"model.logit_softcap must be a finite number"),
    ("optim.grad_clip_norm=inf", r"optim.grad_clip_norm must be a finite number"),
    ("quant.qat_start_frac=-inf", r"quant.qat_start_frac must be a finite number"),
    ("quant.clip_percentile=150", r"quant.clip_percentile must be in \(0, 100\], got 150"),
    ("quant.clip_percentile=0", r"quant.clip_percentile must be in \(0, 100\], got 0"),
    ("quant.clip_sigma=-1", r"quant.clip_sigma must be > 0, got -1"),
    ("quant.clip_sigma=0", r"quant.clip_sigma must be > 0, got 0"),
    ("quant.qat_temperature_end=0", r"quant.qat_temperature_end must be > 0"),
    ("quant.qat_temperature_start=-2", r"quant.qat_temperature_start must be > 0"),
    ("train.device=gpu", r"train.device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("train.device=cuda:x", r"train.device must be"),
    ("quant.codec=lzma", r"quant.codec must be one of zlib, zstd, rans, got 'lzma'"),
    ("train.kernels=cuda", r"train.kernels must be one of"),
    ("quant.scale_rule=minmax", r"quant.scale_rule must be one of"),
    ("optim.ns_schedule=[[1, 2, NaN]]", r"optim.ns_schedule: a custom schedule's coefficients must be finite"),
    ("optim.beta2=1", r"optim.beta2 must be in \[0, 1\)"),
]


@pytest.mark.parametrize("item,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_refused_before_any_work(item, message, tmp_path, reliability):
    answer = pgolf("train", "--preset", "demo", "--set", item, "--run-dir", str(tmp_path / "run"))
    assert_clear(answer, message)
    assert answer.rc == 2 and not (tmp_path / "run").exists()
    reliability("CLEAR")


JSON_FILES = [
    ({"data": {"train_glob": ["a_*.bin", "b_*.bin"]}}, r"invalid value \['a_\*.bin', 'b_\*.bin'\] for data.train_glob: "
                                                       r"expected one string"),
    ({"data": {"tokenizer": None}}, r"invalid value None for data.tokenizer: expected one string"),
    ({"name": {"x": 1}}, r"invalid value \{'x': 1\} for name"),
    (["train", "iterations"], r"must hold a JSON object of sections .* got a list"),
    (7, r"must hold a JSON object of sections .* got a int"),
    ({"train": [1, 2]}, r"config section 'train' must be a mapping"),
    ({"train": {"iterations": 2.5}}, r"invalid value 2.5 for train.iterations \(expected int\)"),
    ({"optim": {"matrix_lr": "fast"}}, r"invalid value 'fast' for optim.matrix_lr \(expected float\)"),
]


@pytest.mark.parametrize("content,message", JSON_FILES, ids=[str(i) for i in range(len(JSON_FILES))])
def test_config_files_of_the_wrong_shape_are_refused(content, message, tmp_path, reliability):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(content))
    answer = pgolf("config", "--preset", "demo", "--config", str(path))
    assert_clear(answer, message)
    reliability("CLEAR")


@pytest.mark.parametrize("args,message", [
    (["--num-val-docs", "0"], r"argument --num-val-docs: must be a whole number >= 1, got '0'"),
    (["--num-val-docs", "-3"], r"argument --num-val-docs: must be a whole number >= 1, got '-3'"),
    (["--shard-tokens", "0"], r"argument --shard-tokens: must be a whole number >= 1"),
    (["--vocab-size", "-1"], r"argument --vocab-size: must be a whole number >= 1"),
    (["--max-docs", "0"], r"argument --max-docs: must be a whole number >= 1"),
    (["--num-val-docs", "ten"], r"argument --num-val-docs: must be a whole number >= 1, got 'ten'"),
])
def test_data_counts_are_checked_where_they_enter(args, message, tmp_path, reliability):
    answer = pgolf("data", "--embedded", "--out", str(tmp_path / "out"), *args)
    assert_clear(answer, message)
    assert not (tmp_path / "out").exists()
    reliability("CLEAR")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_refused(tiny_data, tmp_path, reliability):
    answer = train(tiny_data, tmp_path / "run", **{"train.device": "cuda"})
    assert_clear(answer, r"train.device=cuda but this machine has 0 CUDA device\(s\); use train.device=auto or cpu")
    assert not (tmp_path / "run").exists()
    reliability("CLEAR")


@pytest.fixture(scope="module")
def half_run(tiny_data, tmp_path_factory):
    """A run of 2 of 4 steps (its checkpoint at step 2), copied fresh for each test."""
    run_dir = tmp_path_factory.mktemp("half") / "run"
    assert train(tiny_data, run_dir, **{"train.iterations": 2}).rc == 0
    return run_dir


@pytest.mark.parametrize("change,listed", [
    ({"optim.matrix_lr": 0.5}, r"optim.matrix_lr \(0.03 -> 0.5\)"),
    ({"train.seed": 7}, r"train.seed \(1337 -> 7\)"),
    ({"train.seq_len": 64}, r"train.seq_len \(32 -> 64\)"),
    ({"model.model_dim": 64}, r"model.model_dim \(32 -> 64\)"),
    ({"quant.bits": 6, "optim.beta1": 0.8}, r"optim.beta1 \(0.9 -> 0.8\); quant.bits \(8 -> 6\)"),
])
def test_resume_with_a_changed_config_is_refused_listing_the_keys(tiny_data, half_run, tmp_path, change, listed,
                                                                  reliability):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(half_run, run_dir)
    answer = train(tiny_data, run_dir, "--resume", **{"train.iterations": 4, **change})
    line = assert_clear(answer, rf"--resume: the config differs from the one .*checkpoint.pt was trained with: {listed}\. "
                                r"Only these may change on resume: .*train.iterations")
    assert answer.rc == 2 and "start over with --overwrite" in line
    reliability("CLEAR")


def test_resume_may_change_the_resumable_keys(tiny_data, half_run, tmp_path, reliability):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(half_run, run_dir)
    answer = train(tiny_data, run_dir, "--resume", **{"train.iterations": 4, "train.train_log_every": 2,
                                                      "train.checkpoint_every": 0})
    assert answer.rc == 0, answer.err
    assert "resumed from" in answer.out and json.loads((run_dir / "submission.json").read_text())["steps"] == 4
    reliability("FINE")
