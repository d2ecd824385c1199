"""The codec benchmarks' own logic: the column-class floor, the reach and the column-shuffled twin of
benchmarks/codec_artifacts.py, its synthetic sets, and the check of benchmarks/bench_codec_decode.py
(the harness smoke test in test_bench_harness.py runs that module's tiny case end to end)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from benchmarks import bench_codec_decode
from benchmarks.codec_artifacts import (
    at_block_floor,
    column_class_bits,
    column_shuffled,
    is_block_matrix,
    synthetic_entries,
    twin_row,
)
from benchmarks.codec_sizes import entropy_bits
from pgolf.artifact.format import VERSION, save_artifact
from pgolf.artifact.index import read_index
from pgolf.quant.qtensor import QTensor


def qtensor(codes: np.ndarray) -> QTensor:
    return QTensor(codes=torch.from_numpy(codes), scale=torch.ones(codes.shape[0], dtype=torch.float16), bits=6,
                   shape=codes.shape, dtype=torch.float32)


def gauss_codes(rng, shape, col_std):
    return np.clip(np.round(rng.standard_normal(shape) * col_std), -31, 31).astype(np.int8)


def test_column_class_floor_sees_column_scales_and_nothing_else():
    rng = np.random.default_rng(0)
    spread = gauss_codes(rng, (256, 64), np.repeat([0.7, 6.0], 32))  # two column scales
    flat = gauss_codes(rng, (256, 64), 2.4)
    for codes, low, high in ((spread, 0.0, 0.85), (flat, 0.99, 1.0)):
        ratio = column_class_bits({"blocks.0.mlp.proj.weight": qtensor(codes)}) / entropy_bits(codes)
        assert low <= ratio <= high + 1e-9, ratio


def test_column_class_floor_pools_a_role_across_layers():
    rng = np.random.default_rng(1)
    a, b = gauss_codes(rng, (64, 32), 2.4), gauss_codes(rng, (64, 32), 2.4)
    pooled = column_class_bits({"blocks.0.attn.c_q.weight": qtensor(a), "blocks.1.attn.c_q.weight": qtensor(b)})
    apart = column_class_bits({"blocks.0.attn.c_q.weight": qtensor(a), "blocks.1.attn.c_k.weight": qtensor(b)})
    assert pooled > apart  # pooled histograms cannot fit each matrix's sample as closely


def test_reach_replaces_the_block_matrices_codes_and_nothing_else(tmp_path):
    entries = synthetic_entries("tiny")
    info = save_artifact(tmp_path / "a.pgolf", config={}, tensors=entries)
    header = read_index(info.path)
    (emb,) = [e["codes"] for e in header["tensors"] if e["name"] == "tok_emb.weight"]
    # the int7 embedding is alone in its stream: the rest of the codes are the block matrices'
    emb_bytes = header[emb["codec"]][emb[emb["codec"]]]["length"] if emb["codec"] in ("ctx", "joint") else emb["length"]
    block_codes = header["payload_bytes"] - header["side"]["length"] - emb_bytes
    blocks = {n: t for n, t in entries.items() if isinstance(t, QTensor) and n != "tok_emb.weight"}
    floor = math.ceil(column_class_bits(blocks, classes=64) / 8)
    assert at_block_floor(entries, info.path) == info.total_bytes - block_codes + floor
    assert floor < block_codes  # iid codes: no coder reaches the free-tables floor


def test_column_shuffled_twin_keeps_every_column_and_nothing_else():
    entries = synthetic_entries("tiny")
    twin = column_shuffled(entries)
    for name, t in entries.items():
        if not is_block_matrix(name, t):
            assert twin[name] is t  # the embedding and every float tensor as they are
            continue
        a, b = t.codes.numpy(), twin[name].codes.numpy()
        assert np.array_equal(np.sort(a, axis=0), np.sort(b, axis=0))  # each column keeps its codes
        assert sorted(map(bytes, a)) != sorted(map(bytes, b))  # not merely the rows reordered
        assert twin[name].scale is t.scale
    assert column_class_bits(twin, classes=64) == pytest.approx(column_class_bits(entries, classes=64))
    again = column_shuffled(entries)
    assert all(torch.equal(again[n].codes, twin[n].codes) for n, t in entries.items() if is_block_matrix(n, t))


def test_twin_gain_is_the_structure_a_coder_found_beyond_the_columns(tmp_path):
    iid = synthetic_entries("tiny")
    paired = dict(iid)  # every block matrix's rows in identical pairs: structure beyond the columns
    for name, t in iid.items():
        if is_block_matrix(name, t):
            codes = np.repeat(t.codes.numpy()[::2], 2, axis=0)[: t.codes.shape[0]]
            paired[name] = dataclasses.replace(t, codes=torch.from_numpy(np.ascontiguousarray(codes)))
    for entries, low, high in ((iid, -0.01, 0.01), (paired, 0.03, 1.0)):
        size = save_artifact(tmp_path / "a.pgolf", config={}, tensors=entries).total_bytes
        row = twin_row("case", entries, {f"pgolf-v{VERSION}": size, "pergroup-lrzip": None}, tmp_path)
        cells = [c.strip() for c in row.strip(" |").split("|")]
        assert cells[:2] == ["case", f"{size:,}"] and cells[4:] == ["unavailable"] * 4
        twin_size, gain = int(cells[2].replace(",", "")), int(cells[3].split()[0].replace(",", ""))
        assert gain == twin_size - size
        assert low * twin_size <= gain <= high * twin_size, (gain, twin_size)


def test_synthetic_sets():
    tiny = synthetic_entries("tiny")
    assert tiny["tok_emb.weight"].codes.shape == (128, 64) and tiny["tok_emb.weight"].bits == 7
    assert tiny["blocks.1.mlp.proj.weight"].codes.shape == (64, 128)
    other = synthetic_entries("tiny", seed=12)
    assert not torch.equal(tiny["tok_emb.weight"].codes, other["tok_emb.weight"].codes)
    with pytest.raises(ValueError, match="baseline, record, tiny"):
        synthetic_entries("huge")


def test_decode_check_catches_one_wrong_value_and_a_missing_tensor():
    ref = {"a": np.zeros((3, 4), np.int8), "b": np.ones((2, 2), np.int8)}
    assert bench_codec_decode.check({k: v.copy() for k, v in ref.items()}, ref) is None
    wrong = {k: v.copy() for k, v in ref.items()}
    wrong["a"][2, 3] = 1
    assert "'a'" in bench_codec_decode.check(wrong, ref)
    assert "differ" in bench_codec_decode.check({"a": ref["a"]}, ref)
