"""pgolf.codec rANS coder: the documented stream layout (an independent Python decoder + golden
streams), exact round trips, edge cases, grouping choice and size against the entropy floor."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf import codec

GOLDEN = Path(__file__).parent / "golden" / "codec_rans.json"
MANT = [round(2 ** (12 + i / 16)) for i in range(16)]


def _weight(t):
    return MANT[(t - 1) % 16] << ((t - 1) // 16)


def _normalise(t, lo, hi, prec):
    m = 1 << prec
    present = [s for s in range(lo, hi + 1) if t[s]]
    w = {s: _weight(t[s]) for s in present}
    total = sum(w.values())
    freq = {s: max(1, w[s] * m // total) for s in present}
    rem = {s: w[s] * m % total for s in present}
    deficit = m - sum(freq.values())
    if deficit >= 0:
        for s in sorted(present, key=lambda s: -rem[s])[:deficit]:
            freq[s] += 1
    for _ in range(-deficit):
        freq[max(present, key=lambda s: freq[s])] -= 1
    return freq


def reference_decode(data):
    """Decode a stream following the layout comment of csrc/rans.h only (slow; small inputs)."""
    pos = 0

    def u8():
        nonlocal pos
        pos += 1
        return data[pos - 1]

    def varint():
        v = shift = 0
        while True:
            b = u8()
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v

    assert data[:3] == b"PGR" and data[3] == 1
    pos = 4
    two_d, bits, prec, lanes = u8() & 1, u8(), u8(), u8()
    rows, cols = varint(), varint()
    shape = (rows, cols) if two_d else (cols,)
    if rows * cols == 0:
        assert pos == len(data)
        return np.zeros(shape, np.int8), None
    mode = u8()
    groups = 1 if mode == 0 else varint()
    if mode == 0:
        group = [0] * rows
    elif mode == 1:
        group = [r * groups // rows for r in range(rows)]
    elif mode == 3:
        lengths = [varint() for _ in range(varint())]
        width = (groups - 1).bit_length()
        nbytes = (len(lengths) * width + 7) // 8
        bitsval = int.from_bytes(data[pos:pos + nbytes], "little")
        pos += nbytes
        ids = [(bitsval >> (k * width)) & ((1 << width) - 1) for k in range(len(lengths))]
        group = [g for g, n in zip(ids, lengths) for _ in range(n)]
        assert len(group) == rows
    else:
        width = (groups - 1).bit_length()
        nbytes = (rows * width + 7) // 8
        bitsval = int.from_bytes(data[pos:pos + nbytes], "little")
        pos += nbytes
        group = [(bitsval >> (r * width)) & ((1 << width) - 1) for r in range(rows)]
    tables = []
    for _ in range(groups):
        lo, hi = u8(), u8()
        t = {s: data[pos + s - lo] for s in range(lo, hi + 1)}
        pos += hi - lo + 1
        freq = _normalise(t, lo, hi, prec)
        cum, c = {}, 0
        for s in sorted(freq):
            cum[s], c = c, c + freq[s]
        tables.append((freq, cum))
    x = [int.from_bytes(data[pos + 4 * k:pos + 4 * k + 4], "little") for k in range(lanes)]
    pos += 4 * lanes
    out = np.zeros(rows * cols, np.int8)
    m = 1 << prec
    for i in range(rows * cols):
        freq, cum = tables[group[i // cols]]
        k = i % lanes
        slot = x[k] % m
        s = next(s for s in freq if cum[s] <= slot < cum[s] + freq[s])
        x[k] = freq[s] * (x[k] >> prec) + slot - cum[s]
        if x[k] < 1 << 16:
            x[k] = (x[k] << 16) | int.from_bytes(data[pos:pos + 2], "little")
            pos += 2
        out[i] = s - (1 << (bits - 1))
    assert pos == len(data) and x == [1 << 16] * lanes
    return out.reshape(shape), mode


def quantise(w, bits, rule="maxabs", k=3.0):
    """Per-row symmetric quantisation as pgolf.quant.qtensor.QTensor describes it."""
    qmax = 2 ** (bits - 1) - 1
    clip = np.abs(w).max(1, keepdims=True) if rule == "maxabs" else k * w.std(1, keepdims=True)
    return np.clip(np.round(w / (clip / qmax)), -qmax, qmax).astype(np.int8)


def entropy_bytes(x):
    _, c = np.unique(x, return_counts=True)
    return float(-(c * np.log2(c / c.sum())).sum() / 8)


def small_cases():
    rng = np.random.default_rng(7)
    half = np.concatenate([rng.integers(-1, 2, (8, 300)), rng.integers(-31, 32, (8, 300))]).astype(np.int8)
    alternate = half[np.arange(16).reshape(2, 8).T.reshape(-1)]  # narrow, wide, narrow, ...
    return {
        "gauss_6": (quantise(rng.standard_normal((9, 37)), 6), 6),
        "vector_5": (quantise(rng.standard_normal((1, 101)), 5)[0], 5),
        "halves_6": (half, 6),
        "alternate_6": (alternate, 6),
        "constant_3": (np.full((3, 5), -4, np.int8), 3),
        "uniform_2": (rng.integers(-2, 2, (4, 33)).astype(np.int8), 2),
        "full_8": (rng.integers(-128, 128, (2, 300)).astype(np.int8), 8),
        "one_value_4": (np.array([[7]], np.int8), 4),
        "empty_rows": (np.zeros((0, 5), np.int8), 6),
        "empty_cols": (np.zeros((5, 0), np.int8), 6),
        "empty_1d": (np.zeros(0, np.int8), 6),
    }


def test_stream_layout_matches_independent_reference_decoder():
    modes = set()
    for name, (x, bits) in small_cases().items():
        data = codec.rans_encode(x, bits)
        y, mode = reference_decode(data)
        np.testing.assert_array_equal(y, x, err_msg=name)
        info = codec.rans_info(data)
        assert info["shape"] == x.shape and info["bits"] == bits
        if mode is not None:
            assert info["grouping"] == ("one", "contiguous", "mapped", "segments")[mode]
            assert info["row_groups"].shape == (x.shape[0] if x.ndim == 2 else 1,)
            assert info["row_groups"].max() == info["groups"] - 1
        modes.add(mode)
    assert {0, 1, 2} <= modes, modes  # one group, contiguous groups and a row map all exercised


def segmented_set(seed=11):
    """Eight small "tensors" of three code spreads (as in a trained model), 64 values per row."""
    rng = np.random.default_rng(seed)
    return [np.clip(np.round(rng.standard_normal((rows, 64)) * spread), -31, 31).astype(np.int8)
            for rows, spread in [(8, 2), (16, 9), (4, 2), (8, 20), (12, 9), (8, 2), (16, 20), (4, 9)]]


def test_segments_grouping_matches_reference_decoder():
    tensors = segmented_set()
    flat = np.concatenate(tensors)
    data = codec.rans_encode(flat, 6, segments=[len(t) for t in tensors])
    y, mode = reference_decode(data)
    np.testing.assert_array_equal(y, flat)
    info = codec.rans_info(data)
    assert mode == 3 and info["grouping"] == "segments" and 2 <= info["groups"] <= len(tensors)
    ids = np.split(info["row_groups"], np.cumsum([len(t) for t in tensors])[:-1])
    assert all((g == g[0]).all() for g in ids)  # one group per segment
    assert len(data) < len(codec.rans_encode(flat, 6))
    for bad in ([], [8], [0, 76], [75, 2]):
        if bad:
            with pytest.raises(ValueError, match="segments"):
                codec.rans_encode(flat, 6, segments=bad)


def test_encode_set_is_smaller_than_a_stream_each_and_exact():
    tensors = segmented_set()
    joint, own = codec.rans_encode_set(tensors, 6)
    assert joint is not None and own == [None] * len(tensors)
    assert len(joint) < sum(len(codec.rans_encode(t, 6)) for t in tensors)
    assert codec.rans_info(joint)["shape"] == (sum(t.size for t in tensors) // 64, 64)
    for a, b in zip(codec.rans_decode_set(joint, [t.size for t in tensors]), tensors):
        np.testing.assert_array_equal(a, b.reshape(-1))
    with pytest.raises(codec.CodecError, match="holds 4864 values, its tensors need 4865"):
        codec.rans_decode_set(joint, [t.size for t in tensors] + [1])
    # cols not a multiple of 64 or no values: a stream of its own; the rest joint with rows of gcd(cols)
    odd, empty = np.ones((3, 48), np.int8), np.zeros((0, 64), np.int8)
    joint, own = codec.rans_encode_set([tensors[0], odd, np.concatenate([tensors[1]] * 2, 1), empty], 6)
    assert codec.rans_info(joint)["shape"] == (8 + 32, 64)
    assert own[0] is None and own[2] is None and own[1] is not None and own[3] is not None
    np.testing.assert_array_equal(codec.rans_decode(own[1]), odd)
    assert codec.rans_encode_set([np.zeros((4, 512), np.int8)], 6)[0] is None  # one tensor: its own stream


def test_golden_streams():
    golden = json.loads(GOLDEN.read_text())
    cases = small_cases()
    assert sorted(golden) == sorted(cases)
    for name, (x, bits) in cases.items():
        g = golden[name]
        assert g["bits"] == bits and tuple(g["shape"]) == x.shape
        assert codec.rans_encode(x, bits).hex() == g["stream"], f"{name}: the encoder's output changed"
        y = codec.rans_decode(bytes.fromhex(g["stream"]))
        assert y.shape == x.shape and y.dtype == np.int8
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("bits", range(2, 9))
def test_round_trip_every_width_and_odd_shapes(bits):
    rng = np.random.default_rng(bits)
    qmax = 2 ** (bits - 1) - 1
    for shape in [(1, 1), (1, 7), (7, 1), (3, 1000), (65, 33), (130, 17), (1000,)]:
        w = rng.standard_t(3, shape) * rng.uniform(0.2, 3, shape[:1] + (1,) * (len(shape) - 1))
        x = np.clip(np.round(w * qmax / 4), -qmax - 1, qmax).astype(np.int8)
        y = codec.rans_decode(codec.rans_encode(x, bits))
        assert y.shape == x.shape
        np.testing.assert_array_equal(y, x)
    full = np.arange(-qmax - 1, qmax + 1, dtype=np.int8).repeat(5).reshape(-1, 10 * (qmax + 1))
    np.testing.assert_array_equal(codec.rans_decode(codec.rans_encode(full, bits)), full)


def test_edge_cases_and_inputs():
    for name, (x, bits) in small_cases().items():
        np.testing.assert_array_equal(codec.rans_decode(codec.rans_encode(torch.from_numpy(x), bits)), x, name)
    const = np.full((400, 300), 5, np.int8)
    assert len(codec.rans_encode(const, 6)) < 40  # a single symbol costs no payload
    t = torch.from_numpy(np.random.default_rng(1).integers(-15, 16, (20, 30)).astype(np.int8))
    assert codec.rans_encode(t.T, 5) == codec.rans_encode(np.ascontiguousarray(t.numpy().T), 5)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        codec.rans_encode(np.zeros((2, 2, 2), np.int8), 6)
    with pytest.raises(TypeError, match="int8"):
        codec.rans_encode(np.zeros((2, 2), np.uint8), 6)
    with pytest.raises(ValueError, match="scales"):
        codec.rans_encode(np.zeros((2, 2), np.int8), 6, scales=np.ones(3))


@pytest.mark.parametrize("bits", [5, 6])
def test_out_of_range_names_first_index_and_value(bits):
    x = np.zeros((10, 10), np.int8)
    x[3, 4], x[7, 7] = 2 ** (bits - 1), -100
    with pytest.raises(ValueError, match=rf"value {2 ** (bits - 1)} at index 34 is outside the {bits}-bit range"):
        codec.rans_encode(x, bits)


def test_max_values_bounds_the_declared_shape():
    data = codec.rans_encode(np.zeros((100, 100), np.int8), 6)
    assert codec.rans_decode(data, max_values=10_000).shape == (100, 100)
    with pytest.raises(codec.CodecError, match="more than the 9999 allowed"):
        codec.rans_decode(data, max_values=9_999)


def test_size_within_half_percent_of_tensor_entropy_floor():
    rng = np.random.default_rng(0)
    for bits, rule in [(6, "maxabs"), (5, "sigma"), (6, "sigma")]:
        x = quantise(rng.standard_normal((256, 1024)), bits, rule)
        data = codec.rans_encode(x, bits)
        assert len(data) <= 1.005 * entropy_bytes(x), (bits, rule, len(data) / entropy_bytes(x))


def test_row_groups_beat_the_tensor_floor_and_reach_the_group_floor():
    rng = np.random.default_rng(1)
    narrow = quantise(rng.standard_normal((128, 512)), 6, "sigma", 12.0)  # codes within a few steps of 0
    wide = quantise(rng.standard_normal((128, 512)), 6, "sigma", 2.5)
    order = rng.permutation(256)
    x = np.concatenate([narrow, wide])[order]
    group_floor = entropy_bytes(narrow) + entropy_bytes(wide)
    data = codec.rans_encode(x, 6)
    assert data[8 + 2 + 2] == 2  # grouping byte after the 8-byte head and two 2-byte varints: a row map
    assert len(data) < 0.95 * entropy_bytes(x)
    assert len(data) <= 1.005 * group_floor, len(data) / group_floor
    scales = np.where(order < 128, 1.0, 2.0).astype(np.float32)
    np.testing.assert_array_equal(codec.rans_decode(codec.rans_encode(x, 6, scales=scales)), x)


def test_quick_benchmark_rans_beats_general_compressors(tmp_path):
    from benchmarks.codec_sizes import main

    result = main(["--quick", "--methods", "zstd-22,lzma-9e", "--out", str(tmp_path)])
    assert (tmp_path / "codec.md").exists() and (tmp_path / "codec.csv").exists()
    rows = result["rows"]
    for case in {r.case for r in rows}:
        mine = next(r for r in rows if r.case == case and r.method == "pgolf-rans")
        best_other = min(r.bytes for r in rows if r.case == case and r.method != "pgolf-rans")
        assert mine.bytes < best_other, case
        assert mine.ratio_group_floor < 1.012, (case, mine.ratio_group_floor)  # 64K-value tensors: tables show


def test_codec_benchmark_flags_every_missed_target():
    from benchmarks.codec_sizes import Row, check_targets

    def row(method, nbytes, ratio=1.001):
        return Row("case", method, 1000, nbytes, ratio, ratio, ratio, 0.1, 0.1)

    good = check_targets([row("pgolf-rans", 100), row("bytes+brotli-11", 101)],
                         [{"bits": 6, "pack_GBps": 3.0, "unpack_GBps": 2.0}],
                         {"values": 36_000_000, "encode_s": 1.5, "decode_s": 0.2})
    assert all(ok for _, ok in good) and len(good) == 4
    bad = check_targets([row("pgolf-rans", 102, ratio=1.006), row("bytes+brotli-11", 101)],
                        [{"bits": 5, "pack_GBps": 3.0, "unpack_GBps": 0.8}],
                        {"values": 18_000_000, "encode_s": 1.1, "decode_s": 0.2})
    assert [ok for _, ok in bad] == [False, False, False, False]  # bytes, floor, unpack, speed (< 36M values)
    slow = check_targets([], [], {"values": 37_748_736, "encode_s": 2.1, "decode_s": 0.2})
    assert slow == [("rANS on 37.7M values (goal: 36M): encode 2.10 s, decode 0.20 s, each < 2", False)]
