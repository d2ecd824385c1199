"""The official shard format: golden bytes, memory mapping, and every corruption named."""
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.data.shards import ShardError, load_tokens, read_shard, shard_files, write_shard

GOLDEN = Path(__file__).parent / "golden" / "shard_9_tokens.bin"
GOLDEN_TOKENS = [1, 0, 2, 255, 256, 1023, 8191, 20240, 65535]


def expected_bytes(tokens):
    """The layout spelled out independently: 256 LE int32 (magic, version, N, zeros), N LE uint16."""
    header = struct.pack("<256i", 20240520, 1, len(tokens), *([0] * 253))
    return header + struct.pack(f"<{len(tokens)}H", *tokens)


def test_golden_bytes(tmp_path):
    out = tmp_path / "s.bin"
    assert write_shard(out, GOLDEN_TOKENS) == 1024 + 2 * len(GOLDEN_TOKENS)
    assert out.read_bytes() == GOLDEN.read_bytes() == expected_bytes(GOLDEN_TOKENS)


@pytest.mark.parametrize("convert", [list, np.array, lambda t: np.array(t, dtype=np.int64),
                                     lambda t: torch.tensor(t, dtype=torch.int32)], ids=["list", "np", "np64", "torch"])
def test_input_types_write_same_bytes(tmp_path, convert):
    write_shard(tmp_path / "s.bin", convert(GOLDEN_TOKENS))
    assert (tmp_path / "s.bin").read_bytes() == GOLDEN.read_bytes()


@pytest.mark.parametrize("bad,where", [([3, -1], "token -1 at index 1"), ([5, 6, 65536], "token 65536 at index 2")])
def test_write_rejects_out_of_range(tmp_path, bad, where):
    with pytest.raises(ValueError, match=where):
        write_shard(tmp_path / "s.bin", bad)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def test_write_rejects_floats(tmp_path):
    with pytest.raises(ValueError, match="integers"):
        write_shard(tmp_path / "s.bin", np.array([1.0, 2.0]))


def test_atomic_write_leaves_only_the_shard(tmp_path):
    write_shard(tmp_path / "s.bin", [1, 2, 3])
    write_shard(tmp_path / "s.bin", [4, 5])  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]
    assert read_shard(tmp_path / "s.bin").tolist() == [4, 5]


@pytest.mark.parametrize("n", [0, 1, 1000, 4097])
def test_round_trip_random(tmp_path, n):
    tokens = np.random.default_rng(n).integers(0, 65536, size=n)
    write_shard(tmp_path / "s.bin", tokens)
    assert (tmp_path / "s.bin").read_bytes() == expected_bytes(tokens.tolist())
    got = read_shard(tmp_path / "s.bin")
    assert got.dtype == np.uint16 and np.array_equal(got, tokens)
    assert np.array_equal(read_shard(tmp_path / "s.bin", mmap=False), tokens)


def test_read_is_memory_mapped(tmp_path):
    write_shard(tmp_path / "s.bin", np.arange(5000))
    arr = read_shard(tmp_path / "s.bin")
    assert isinstance(arr, np.memmap) and not arr.flags.owndata and not arr.flags.writeable
    assert arr[4000:4003].tolist() == [4000, 4001, 4002]
    copy = read_shard(tmp_path / "s.bin", mmap=False)
    assert not isinstance(copy, np.memmap) and copy.flags.owndata


def _corrupt(tmp_path, mutate):
    path = tmp_path / "bad.bin"
    data = bytearray(expected_bytes([7, 8, 9, 10]))
    path.write_bytes(bytes(mutate(data)))
    return path


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d[:1000], "1000 bytes is too short for the 1024-byte header"),
    (lambda d: struct.pack("<i", 1234) + d[4:], "wrong magic 1234"),
    (lambda d: d[:4] + struct.pack("<i", 2) + d[8:], "unsupported version 2"),
    (lambda d: d[:-1], "truncated: header says 4 tokens, so 1032 bytes, but the file has 1031 bytes"),
    (lambda d: d + b"\0\0", "oversized: header says 4 tokens, so 1032 bytes, but the file has 1034 bytes"),
    (lambda d: d[:8] + struct.pack("<i", -3) + d[12:], "header says -3 tokens"),
], ids=["short", "magic", "version", "truncated", "oversized", "negative"])
def test_corrupt_shards_are_named(tmp_path, mutate, message):
    path = _corrupt(tmp_path, mutate)
    with pytest.raises(ShardError, match=message) as err:
        read_shard(path)
    assert str(path) in str(err.value)


def test_vocab_check_names_first_offender(tmp_path):
    write_shard(tmp_path / "s.bin", [1, 2, 600, 3, 700])
    assert read_shard(tmp_path / "s.bin", vocab_size=701).tolist() == [1, 2, 600, 3, 700]
    with pytest.raises(ShardError, match=r"token id 600 at index 2 is >= vocab_size 512"):
        read_shard(tmp_path / "s.bin", vocab_size=512)


def test_shard_error_is_value_error():
    assert issubclass(ShardError, ValueError)


def test_shard_files_sorted_and_checked(tmp_path):
    for i in (2, 0, 1):
        write_shard(tmp_path / f"fineweb_val_{i:06d}.bin", [i] * (i + 1))
    files = shard_files(str(tmp_path / "fineweb_val_*.bin"))
    assert [f.name for f in files] == [f"fineweb_val_{i:06d}.bin" for i in range(3)]
    assert load_tokens(str(tmp_path / "fineweb_val_*.bin"), vocab_size=3).tolist() == [0, 1, 1, 2, 2, 2]


def test_shard_files_empty_glob_names_pattern(tmp_path):
    pattern = str(tmp_path / "nothing_*.bin")
    with pytest.raises(ShardError, match="no shard files match") as err:
        shard_files(pattern)
    assert pattern in str(err.value)


@pytest.mark.parametrize("intruder,content", [("notes.txt", b"hello"), ("x_bad.bin", b"\1" * 2000)])
def test_shard_files_rejects_non_shards(tmp_path, intruder, content):
    write_shard(tmp_path / "x_a.bin", [1])
    (tmp_path / intruder).write_bytes(content)
    with pytest.raises(ShardError) as err:
        shard_files(str(tmp_path / "*"))
    assert intruder in str(err.value)
