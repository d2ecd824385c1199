"""Reliability, family 1: no wrong score without a warning.

Token ids only mean something with the tokenizer that made them, a score only with the split it
was taken on: every case here used to print a wrong or misleading number and exit 0.
"""
import json
import shutil

import numpy as np
import pytest

from _reliability import assert_clear, copy_dataset, pgolf, train
from pgolf.data.shards import read_shard, write_shard


def test_training_with_another_tokenizer_than_the_shards_is_refused(tiny_data, other_data, tmp_path, reliability):
    answer = train(tiny_data, tmp_path / "run", **{"data.tokenizer": other_data / "tokenizer.model",
                                                   "model.vocab_size": 400})  # past the vocab check
    assert_clear(answer, r"shards in .* were made by tokenizer tokenizer.model \(sha256 \w+, 512 pieces\) but "
                         r"data.tokenizer is tokenizer.model \(sha256 \w+, 400 pieces\)")
    assert not (tmp_path / "run").exists()
    reliability("CLEAR")


def test_training_official_1024_tokenizer_on_512_shards_is_refused(tiny_data, sp1024_path, tmp_path, reliability):
    answer = train(tiny_data, tmp_path / "run", **{"data.tokenizer": sp1024_path, "model.vocab_size": 1024})
    assert_clear(answer, r"were made by tokenizer .*512 pieces.* but data.tokenizer is fineweb_1024_bpe.model")
    reliability("CLEAR")


@pytest.mark.parametrize("source", ["--artifact", "--checkpoint"])
def test_scoring_with_another_tokenizer_is_refused(trained, other_data, source, reliability):
    run_dir, _ = trained
    path = run_dir / ("model.pgolf" if source == "--artifact" else "checkpoint.pt")
    answer = pgolf("eval", source, str(path), "--tokenizer", str(other_data / "tokenizer.model"),
                   "--val-glob", str(other_data / "val_*.bin"))
    assert_clear(answer, r"was made with tokenizer tokenizer.model \(sha256 \w+, 512 pieces\) but the tokenizer "
                         r"given is tokenizer.model \(sha256 \w+, 400 pieces\)")
    reliability("CLEAR")


def test_scoring_on_another_tokenizers_shards_is_refused(trained, tiny_data, other_data, reliability):
    run_dir, _ = trained
    answer = pgolf("eval", "--artifact", str(run_dir / "model.pgolf"), "--tokenizer", str(tiny_data / "tokenizer.model"),
                   "--val-glob", str(other_data / "val_*.bin"))
    assert_clear(answer, r"shards in .* were made by tokenizer .*400 pieces")
    reliability("CLEAR")


@pytest.mark.parametrize("source", ["--artifact", "--checkpoint"])
def test_eval_uses_the_runs_seq_len_and_data_not_the_presets(trained, source, reliability):
    """The demo preset says seq_len 256 and other shards; the run used 32 on its own shards: with
    nothing given, eval scores as the run did (the same number the run reported)."""
    run_dir, sub = trained
    path = run_dir / ("model.pgolf" if source == "--artifact" else "checkpoint.pt")
    answer = pgolf("eval", "--preset", "demo", source, str(path), "--set", "train.kernels=torch")
    assert answer.rc == 0, answer.err
    key = "val_bpb" if source == "--artifact" else "pre_export_val_bpb"
    assert f"val_bpb:{sub[key]:.8f}" in answer.out
    reliability("FINE")


def test_an_explicit_seq_len_override_is_used_and_printed(trained, reliability):
    run_dir, sub = trained
    answer = pgolf("eval", "--artifact", str(run_dir / "model.pgolf"), "--set", "train.seq_len=16")
    assert answer.rc == 0, answer.err
    assert "overriding the seq_len 32 recorded in artifact" in answer.err and "train.seq_len=16" in answer.err
    assert f"val_bpb:{sub['val_bpb']:.8f}" not in answer.out  # another window length, another number
    reliability("FINE")


def _unverified(tiny_data, tmp_path, *, val=None, train_tokens=None):
    """A folder without manifest holding the tiny build's shards (val / train replaced if given)."""
    folder = copy_dataset(tiny_data, tmp_path / "plain", manifest=False)
    if val is not None:
        write_shard(folder / "val_000000.bin", np.asarray(val, dtype=np.int64))
    if train_tokens is not None:
        for f in folder.glob("train_*.bin"):
            f.unlink()
        write_shard(folder / "train_000000.bin", np.asarray(train_tokens, dtype=np.int64))
    return folder


@pytest.mark.parametrize("val_tokens", [[], [1, 5, 9], list(range(32))])
def test_an_empty_or_too_small_validation_split_is_refused_before_training(tiny_data, tmp_path, val_tokens, reliability):
    folder = _unverified(tiny_data, tmp_path, val=val_tokens)
    answer = train(folder, tmp_path / "run", **{"data.verify_manifest": "false", "data.tokenizer": tiny_data / "tokenizer.model"})
    assert_clear(answer, rf"validation split .* holds {len(val_tokens)} tokens; scoring needs at least "
                         r"train.seq_len \+ 1 = 33")
    assert not (tmp_path / "run").exists()
    reliability("CLEAR")


@pytest.mark.parametrize("train_glob", ["{d}/val_*.bin", "{d}/*.bin", "{d}/val_000000.bin"])
def test_training_on_the_validation_split_is_refused(tiny_data, tmp_path, train_glob, reliability):
    answer = train(tiny_data, tmp_path / "run", **{"data.train_glob": train_glob.format(d=tiny_data)})
    assert_clear(answer, r"matches both data.train_glob .* and data.val_glob")
    reliability("CLEAR")


def test_a_copy_of_the_validation_shard_among_the_training_shards_is_refused(tiny_data, tmp_path, reliability):
    folder = _unverified(tiny_data, tmp_path)
    shutil.copy(folder / "val_000000.bin", folder / "train_000009.bin")
    answer = train(folder, tmp_path / "run", **{"data.verify_manifest": "false"})
    assert_clear(answer, r"training shard .*train_000009.bin has the same content as validation shard")
    reliability("CLEAR")


def test_a_manifests_validation_shard_matched_by_the_train_glob_is_refused(tiny_data, tmp_path, reliability):
    """Renamed to look like a training shard but listed as validation in the manifest."""
    folder = copy_dataset(tiny_data, tmp_path / "d")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0]["file"] = "train_val.bin"
    (folder / "val_000000.bin").rename(folder / "train_val.bin")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    answer = train(folder, tmp_path / "run", **{"data.val_glob": f"{tiny_data}/val_*.bin"})
    assert_clear(answer, r"train_val.bin is a validation shard \(its manifest says so\)")
    reliability("CLEAR")


def test_a_training_split_shorter_than_one_sequence_is_refused(tiny_data, tmp_path, reliability):
    folder = _unverified(tiny_data, tmp_path, train_tokens=range(1, 11))
    answer = train(folder, tmp_path / "run", **{"data.verify_manifest": "false"})
    assert_clear(answer, r"training split .* holds 10 tokens, less than one sequence of train.seq_len=32")
    reliability("CLEAR")


def test_a_small_training_split_that_loops_says_so(tiny_data, tmp_path, reliability):
    folder = _unverified(tiny_data, tmp_path, train_tokens=np.arange(1, 301) % 500)
    answer = train(folder, tmp_path / "run", **{"data.verify_manifest": "false", "train.checkpoint_every": 0})
    assert answer.rc == 0, answer.err
    assert "warning: the training split holds 300 tokens; 4 steps of 256 read it 3.4 times over" in answer.out
    assert "read unverified (no manifest" in answer.out
    reliability("FINE")


def test_a_folder_without_a_manifest_is_refused_unless_read_unverified(tiny_data, tmp_path, reliability):
    """What an interrupted build of an older pgolf, or a hand-copied folder, looks like."""
    folder = _unverified(tiny_data, tmp_path)
    answer = train(folder, tmp_path / "run")
    assert_clear(answer, r"plain has no manifest.json, so nothing says which tokenizer made its shards.*"
                         r"data.verify_manifest=false")
    reliability("CLEAR")


def test_a_shard_the_manifest_does_not_list_is_refused(tiny_data, tmp_path, reliability):
    folder = copy_dataset(tiny_data, tmp_path / "d")
    shutil.copy(folder / "train_000000.bin", folder / "train_000007.bin")
    answer = train(folder, tmp_path / "run")
    assert_clear(answer, r"train_000007.bin is not listed in .*manifest.json: a stale or foreign file")
    reliability("CLEAR")


def test_a_shard_the_manifest_lists_but_is_missing_is_refused(tiny_data, tmp_path, reliability):
    folder = copy_dataset(tiny_data, tmp_path / "d", manifest=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"].append({"file": "train_000001.bin", "tokens": 5, "sha256": "0" * 64})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    answer = train(folder, tmp_path / "run")
    assert_clear(answer, r"lists train_000001.bin in the train split but the file is missing: the folder is incomplete")
    reliability("CLEAR")


def test_a_shard_whose_size_differs_from_the_manifest_is_refused(tiny_data, tmp_path, reliability):
    folder = copy_dataset(tiny_data, tmp_path / "d")
    tokens = np.asarray(read_shard(folder / "train_000000.bin"))
    write_shard(folder / "train_000000.bin", tokens[:-5])
    answer = train(folder, tmp_path / "run")
    assert_clear(answer, r"train_000000.bin holds \d+ tokens but .*manifest.json says \d+")
    reliability("CLEAR")


def test_training_ids_beyond_the_tokenizer_are_refused(tiny_data, tmp_path, reliability):
    """Unverified shards of a bigger tokenizer: the first bad batch is named (was an IndexError)."""
    folder = _unverified(tiny_data, tmp_path, train_tokens=np.arange(3000) % 700)
    answer = train(folder, tmp_path / "run", **{"data.verify_manifest": "false"})
    assert_clear(answer, r"train_000000.bin: token id \d+ at index \d+ is >= vocab_size 512")
    reliability("CLEAR")


def test_validation_ids_beyond_the_tokenizer_are_refused_even_under_a_larger_model_vocab(tiny_data, tmp_path,
                                                                                        reliability):
    """Ids 512..1023 mean nothing to the 512-piece byte table (0 bytes): with the model's vocab equal
    to the tokenizer's they are refused when read, and a larger model vocab is refused outright."""
    folder = _unverified(tiny_data, tmp_path, val=np.arange(2000) % 900)
    answer = train(folder, tmp_path / "run", **{"data.verify_manifest": "false"})
    assert_clear(answer, r"val_000000.bin: token id \d+ at index \d+ is >= vocab_size 512")
    answer = train(folder, tmp_path / "run2", **{"data.verify_manifest": "false", "model.vocab_size": 1024})
    assert_clear(answer, r"model.vocab_size=1024 does not match the tokenizer's vocab \(512\)")
    reliability("CLEAR")


def test_the_artifact_and_checkpoint_record_the_runs_identity(trained, tiny_data, reliability):
    from pgolf.artifact.format import load_artifact
    from pgolf.data.build import file_sha256
    from pgolf.train.checkpoint import load_checkpoint

    run_dir, _ = trained
    for identity in (load_artifact(run_dir / "model.pgolf").meta["identity"],
                     load_checkpoint(run_dir / "checkpoint.pt")["identity"]):
        assert identity["tokenizer"]["sha256"] == file_sha256(tiny_data / "tokenizer.model")
        assert identity["tokenizer"]["vocab_size"] == 512 and identity["seq_len"] == 32
        assert identity["vocab_size"] == 512 and identity["val_glob"] == f"{tiny_data}/val_*.bin"
    reliability("FINE")
