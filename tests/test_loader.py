"""The distributed token loader: global batches independent of world size and accumulation."""
import os

import numpy as np
import pytest
import torch

from pgolf.data.loader import LoaderError, TokenLoader
from pgolf.data.shards import write_shard

SIZES = (1000, 37, 2500, 0, 463)


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 1024, size=n) for n in SIZES]
    for i, part in enumerate(parts):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", part)
    return str(tmp_path / "fineweb_train_*.bin"), np.concatenate(parts)


def reference_batch(stream, step, global_tokens, seq_len):
    """Step ``step``'s global sequences, straight from the definition."""
    chunk = stream[(step * global_tokens + np.arange(global_tokens + 1)) % len(stream)].astype(np.int64)
    return torch.from_numpy(chunk[:-1]).view(-1, seq_len), torch.from_numpy(chunk[1:]).view(-1, seq_len)


def gather(pattern, step, world_size, accum, global_tokens, seq_len):
    """Concatenate every rank's micro-batches in (rank, micro_step) order."""
    xs, ys = [], []
    for rank in range(world_size):
        loader = TokenLoader(pattern, rank=rank, world_size=world_size)
        for m in range(accum):
            x, y = loader.next_batch(step, global_tokens=global_tokens, seq_len=seq_len,
                                     grad_accum_steps=accum, micro_step=m)
            assert x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
            assert x.shape == (global_tokens // (world_size * accum * seq_len), seq_len)
            xs.append(x)
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("accum", [1, 2, 4])
def test_global_batch_independent_of_world_and_accum(shards, world_size, accum):
    pattern, stream = shards
    for step in (0, 1, 3, 7):  # 7 * 512 > 3999 tokens: wraps around the end of the data
        x, y = gather(pattern, step, world_size, accum, global_tokens=512, seq_len=32)
        rx, ry = reference_batch(stream, step, 512, 32)
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_batch_larger_than_data_wraps(shards):
    pattern, stream = shards
    x, y = gather(pattern, 2, 2, 1, global_tokens=8192, seq_len=64)
    rx, ry = reference_batch(stream, 2, 8192, 64)
    assert torch.equal(x, rx) and torch.equal(y, ry)


def test_a_shard_truncated_under_the_loader_is_named_not_a_bus_error(shards, tmp_path):
    loader = TokenLoader(shards[0])
    loader.next_batch(0, global_tokens=64, seq_len=16, grad_accum_steps=1, micro_step=0)
    victim = tmp_path / "fineweb_train_000002.bin"
    with open(victim, "r+b") as f:  # rewritten in place by another tool: the file shrinks
        f.truncate(1024 + 100)
    with pytest.raises(LoaderError, match=r"fineweb_train_000002.bin changed while it was being read"):
        loader.next_batch(20, global_tokens=64, seq_len=16, grad_accum_steps=1, micro_step=0)


def test_a_shard_rewritten_in_place_at_the_same_size_is_named(shards, tmp_path):
    loader = TokenLoader(shards[0])
    loader.next_batch(0, global_tokens=64, seq_len=16, grad_accum_steps=1, micro_step=0)
    victim = tmp_path / "fineweb_train_000002.bin"
    stat = victim.stat()
    with open(victim, "r+b") as f:  # same size, other tokens
        f.seek(1024)
        f.write(bytes(64))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a later write, whatever the clock tick
    assert victim.stat().st_size == stat.st_size
    with pytest.raises(LoaderError, match=r"fineweb_train_000002.bin changed while it was being read"):
        loader.next_batch(20, global_tokens=64, seq_len=16, grad_accum_steps=1, micro_step=0)


def test_ids_at_or_above_the_vocabulary_are_refused_as_they_are_read(shards):
    loader = TokenLoader(shards[0], vocab_size=1000)  # the shards hold ids up to 1023
    with pytest.raises(LoaderError, match=r"token id 10\d\d at index \d+ is >= vocab_size 1000"):
        for step in range(40):
            loader.next_batch(step, global_tokens=64, seq_len=16, grad_accum_steps=1, micro_step=0)
    TokenLoader(shards[0], vocab_size=1024).next_batch(0, global_tokens=64, seq_len=16, grad_accum_steps=1,
                                                        micro_step=0)


def test_seed_permutes_shards_deterministically(shards):
    pattern, _ = shards
    orders = {seed: TokenLoader(pattern, seed=seed).fingerprint for seed in (0, 1, 2, 3)}
    assert len(set(orders.values())) > 1
    assert TokenLoader(pattern, seed=2).fingerprint == orders[2]
    a = TokenLoader(pattern, seed=3).next_batch(0, global_tokens=256, seq_len=32, grad_accum_steps=1, micro_step=0)
    b = TokenLoader(pattern, seed=3).next_batch(0, global_tokens=256, seq_len=32, grad_accum_steps=1, micro_step=0)
    assert torch.equal(a[0], b[0])


def test_resume_sees_the_same_tokens(shards):
    pattern, _ = shards
    geometry = dict(global_tokens=256, seq_len=32, grad_accum_steps=2)
    first = TokenLoader(pattern, rank=1, world_size=2, seed=5)
    for step in range(4):
        for m in range(2):
            first.next_batch(step, micro_step=m, **geometry)
    state = first.state_dict()
    resumed = TokenLoader(pattern, rank=1, world_size=2, seed=5)
    resumed.load_state_dict(state)
    for step in range(4, 7):  # the position is the step, which the checkpoint holds
        for m in range(2):
            a, b = first.next_batch(step, micro_step=m, **geometry), resumed.next_batch(step, micro_step=m, **geometry)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_resume_with_other_shards_or_seed_fails(shards, tmp_path):
    pattern, _ = shards
    state = TokenLoader(pattern, seed=5).state_dict()
    write_shard(tmp_path / "fineweb_train_000009.bin", [1, 2, 3])
    with pytest.raises(LoaderError, match=r"different shard list \(5 shards, 4000 tokens.*than this loader's "
                                          r"\(6 shards, 4003 tokens"):
        TokenLoader(pattern, seed=5).load_state_dict(state)
    with pytest.raises(LoaderError, match="seed 5, this loader has seed 6"):
        TokenLoader(pattern, seed=6).load_state_dict(state)


def test_bad_geometry(shards):
    loader = TokenLoader(shards[0], rank=0, world_size=2)
    with pytest.raises(LoaderError, match="must split into whole sequences"):
        loader.next_batch(0, global_tokens=100, seq_len=32, grad_accum_steps=1, micro_step=0)
    with pytest.raises(LoaderError, match="micro_step 2"):
        loader.next_batch(0, global_tokens=128, seq_len=32, grad_accum_steps=2, micro_step=2)
    with pytest.raises(LoaderError, match="rank 2 is outside"):
        TokenLoader(shards[0], rank=2, world_size=2)


def test_no_tokens(tmp_path):
    write_shard(tmp_path / "a.bin", [])
    with pytest.raises(LoaderError, match="hold no tokens"):
        TokenLoader(str(tmp_path / "*.bin"))
