"""Atomic checkpoint writes: a failure mid-write never damages the previous file."""
import pytest
import torch

from pgolf.train.checkpoint import load_checkpoint, save_checkpoint
from pgolf.util.atomic import atomic_write_bytes


def test_a_failed_write_leaves_the_old_checkpoint_intact(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 4, "w": torch.arange(3)})

    def crash(f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, crash)
    ck = load_checkpoint(path)
    assert ck["step"] == 4 and torch.equal(ck["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_load_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is damaged or not a torch.save file"):
        load_checkpoint(bad)
