"""pgolf.codec context-modelled coder (csrc/ctxcoder.h): exact round trips for every variant,
with and without column priors, golden streams (version 3 written and read, version 2 still
read), the documented header, the coded row order, input errors, the variant choice, and that the
contexts pay where weight-matrix structure exists (near-duplicate rows, column scales, a column
prior) and cost little where it does not. Hostile input is in tests/test_codec_fuzz.py."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pgolf import codec

GOLDEN = Path(__file__).parent / "golden" / "codec_ctx.json"
GOLDEN_V2 = Path(__file__).parent / "golden" / "codec_ctx_v2.json"  # streams of the previous model, decode only


def gauss(rng, shape, bits, spread=3.0):
    q = 2 ** (bits - 1) - 1
    return np.clip(np.round(rng.standard_normal(shape) * q / spread), -q - 1, q).astype(np.int8)


def roundtrip(mats, bits, flags=None, priors=None):
    data = codec.ctx_encode(mats, bits, force_flags=flags, priors=priors)
    out = codec.ctx_decode(data, priors=priors)
    assert len(out) == len(mats)
    for a, b in zip(mats, out):
        assert b.dtype == np.int8 and b.shape == a.shape
        np.testing.assert_array_equal(a, b)
    return data


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7, 8])
@pytest.mark.parametrize("flags", [None, 0, 1, 2, 3])
@pytest.mark.parametrize("with_priors", [False, True])
def test_roundtrip_every_variant_and_width(bits, flags, with_priors):
    rng = np.random.default_rng(bits * 10 + (flags or 0))
    mats = [gauss(rng, s, bits) for s in [(7, 9), (1, 5), (5, 1), (0, 3), (3, 0), (33, 64), (64, 17)]]
    priors = [rng.integers(0, 16, m.shape[1]) if k % 3 else None for k, m in enumerate(mats)] if with_priors else None
    data = roundtrip(mats, bits, flags, priors)
    info = codec.ctx_info(data)
    assert info["version"] == 3 and info["bits"] == bits and info["shapes"] == [m.shape for m in mats]
    given = [4 if with_priors and k % 3 and m.size else 0 for k, m in enumerate(mats)]
    used = [f & 4 for f in info["flags"]]
    if flags is None:  # the encoder may leave the priors out (all of them), if that codes smaller
        assert used in (given, [0] * len(mats))
    else:  # forced flags: every given prior is used
        assert used == given
    if flags is not None:  # empty matrices keep flags 0
        assert [f & 3 for f in info["flags"]] == [flags if m.size else 0 for m in mats]


@pytest.mark.parametrize("bits", [2, 6, 8])
def test_extreme_values_roundtrip(bits):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    rng = np.random.default_rng(1)
    m = rng.choice(np.array([lo, hi, 0, lo + 1, hi - 1], np.int8), (16, 24))
    for flags in (0, 3):
        roundtrip([m, np.full((4, 4), lo, np.int8), np.full((4, 4), hi, np.int8)], bits, flags)


def test_empty_streams():
    assert codec.ctx_decode(codec.ctx_encode([], 6)) == []
    out = codec.ctx_decode(codec.ctx_encode([np.zeros((0, 5), np.int8)], 6))
    assert len(out) == 1 and out[0].shape == (0, 5)


def test_header_layout():
    m = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    data = codec.ctx_encode([m], 4, force_flags=2)
    assert data[:5] == b"PGC\x03\x04"
    assert data[5:9] == bytes([1, 3, 4, 2])  # K = 1, rows 3, cols 4, flags permuted
    # version 3 codes the row order in the payload, which starts right after the headers
    assert codec.ctx_info(data)["flags"] == [2]
    prior = codec.ctx_encode([m], 4, force_flags=0, priors=[np.array([0, 1, 2, 15])])
    assert prior[5:9] == bytes([1, 3, 4, 4])  # flags: coded with a column prior


def test_row_order_costs_log2_of_r_factorial():
    """The row order is coded as ranks among the rows left (uniform): log2(R!) bits, not R x
    ceil(log2 R) as version 2 stored it. Zero matrices make the values nearly free."""
    for R in (300, 1000):
        m = np.zeros((R, 1), np.int8)
        extra = len(codec.ctx_encode([m], 6, force_flags=2)) - len(codec.ctx_encode([m], 6, force_flags=0))
        ideal = math.lgamma(R + 1) / math.log(2) / 8
        assert ideal - 2 <= extra <= 1.01 * ideal + 2, (R, extra, ideal)
        assert extra < 0.9 * R * math.ceil(math.log2(R)) / 8


def test_auto_variant_is_the_smallest_single_matrix():
    rng = np.random.default_rng(3)
    base = gauss(rng, (8, 48), 6)
    m = np.clip(base[rng.integers(0, 8, 64)] + rng.integers(-1, 2, (64, 48)), -31, 31).astype(np.int8)
    sizes = {f: len(codec.ctx_encode([m], 6, force_flags=f)) for f in range(4)}
    auto = codec.ctx_encode([m], 6)
    assert len(auto) == min(sizes.values())
    assert codec.ctx_info(auto)["flags"] == [min(sizes, key=sizes.get)]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="index 5"):
        codec.ctx_encode([np.array([[0, 1, 2, 3, 4, 9]], np.int8)], 4)
    with pytest.raises(ValueError, match="bits"):
        codec.ctx_encode([np.zeros((2, 2), np.int8)], 9)
    with pytest.raises(ValueError, match="2-D"):
        codec.ctx_encode([np.zeros(4, np.int8)], 6)
    with pytest.raises(ValueError, match="force_flags"):
        codec.ctx_encode([np.zeros((2, 2), np.int8)], 6, force_flags=4)
    with pytest.raises(TypeError):
        codec.ctx_encode([np.zeros((2, 2), np.int16)], 6)
    with pytest.raises(codec.CodecError, match="allowed"):
        codec.ctx_decode(codec.ctx_encode([np.zeros((8, 8), np.int8)], 6), max_values=63)


def test_version_2_row_orders_are_checked():
    """Version 2 stored the row order as a bitmap in the header: a decoder of such a stream still
    checks that it is a permutation with zero padding."""
    data = bytearray(bytes.fromhex(json.loads(GOLDEN_V2.read_text())["dup7_permuted_pair"]["stream"]))
    assert data[3] == 2 and data[5:12] == bytes([2, 9, 20, 3, 4, 5, 3])  # two matrices, transposed + permuted
    perm_at = 12  # first: 20 coded rows, 5 bits each: 100 bits in 13 bytes, 4 padding bits
    bad = bytearray(data)
    bad[perm_at:perm_at + 13] = bytes(13)  # rows 0, 0, 0, ...
    with pytest.raises(codec.CodecError, match="permutation"):
        codec.ctx_decode(bytes(bad))
    bad = bytearray(data)
    bad[perm_at + 12] |= 0x80
    with pytest.raises(codec.CodecError, match="padding"):
        codec.ctx_decode(bytes(bad))


def test_prior_errors():
    m = np.zeros((4, 6), np.int8)
    data = codec.ctx_encode([m, m], 6, force_flags=0, priors=[None, np.arange(6)])
    assert codec.ctx_info(data)["flags"][1] & 4 and not codec.ctx_info(data)["flags"][0] & 4
    with pytest.raises(codec.CodecError, match="matrix 1 was coded with a column prior and none was given"):
        codec.ctx_decode(data)
    with pytest.raises(codec.CodecError, match="matrix 1 was coded with a column prior and none was given"):
        codec.ctx_decode(data, priors=[np.arange(6), None])
    assert all((a == 0).all() for a in codec.ctx_decode(data, priors=[np.arange(6), np.arange(6)]))  # unused: ignored
    with pytest.raises(ValueError, match="prior 1 has 5 classes, its matrix has 6 columns"):
        codec.ctx_encode([m, m], 6, priors=[None, np.arange(5)])
    with pytest.raises(ValueError, match="prior 1 has 5 classes"):
        codec.ctx_decode(data, priors=[None, np.arange(5)])
    with pytest.raises(ValueError, match="classes 0..15"):
        codec.ctx_encode([m], 6, priors=[np.full(6, 16)])
    with pytest.raises(ValueError, match="classes 0..15"):
        codec.ctx_decode(data, priors=[None, np.array([0, 1, 2, 3, 4, 16])])
    with pytest.raises(ValueError, match="one entry .* per tensor, got 1 for 2"):
        codec.ctx_encode([m, m], 6, priors=[None])
    with pytest.raises(ValueError, match="1-D integer"):
        codec.ctx_encode([m], 6, priors=[np.zeros(6, np.float32)])


def test_prior_classes():
    x = np.array([0.5, 0.1, 0.1, 3.0, 0.2, 0.1, 9.0, 0.3], np.float16)
    # stable ranks: the three 0.1 in order of position take ranks 0, 1, 2
    np.testing.assert_array_equal(codec.prior_classes(x, 4), [2, 0, 0, 3, 1, 1, 3, 2])
    c = codec.prior_classes(np.random.default_rng(1).standard_normal(1000))
    assert c.dtype == np.uint8 and np.bincount(c).tolist() == [63, 62, 63, 62, 63, 62, 63, 62] * 2
    with pytest.raises(ValueError, match="1-D"):
        codec.prior_classes(np.zeros((2, 2)))


def test_a_column_prior_pays_where_columns_have_few_rows():
    """Short matrices whose column magnitudes follow a known vector (mlp.proj's columns follow the
    scales of the mlp.fc rows that feed them): with the vector's rank classes as the prior the
    model knows each column's scale before its first value."""
    rng = np.random.default_rng(12)
    mats, priors = [], []
    for _ in range(6):
        col_scale = np.exp(rng.uniform(-1.5, 1.5, 256))
        w = rng.standard_normal((12, 256)) * col_scale[None, :]
        mats.append(np.clip(np.round(w / w.std() * 31 / 4), -31, 31).astype(np.int8))
        priors.append(codec.prior_classes(col_scale * np.exp(rng.normal(0, 0.1, 256))))  # a noisy copy
    with_prior, without = roundtrip(mats, 6, None, priors), roundtrip(mats, 6)
    assert len(with_prior) < 0.98 * len(without), (len(with_prior), len(without))  # 9,923 vs 10,194 bytes


def test_near_duplicate_rows_code_far_below_order0():
    """Rows that are noisy copies of a few prototypes (the tied embedding's case): the reordered
    variant with the previous-row contexts beats order-0 rANS by a wide margin."""
    rng = np.random.default_rng(4)
    protos = gauss(rng, (16, 128), 6)
    noise = rng.integers(-1, 2, (256, 128)) * (rng.random((256, 128)) < 0.1)
    m = np.clip(protos[rng.integers(0, 16, 256)] + noise, -31, 31).astype(np.int8)
    ctx = roundtrip([m], 6)
    assert codec.ctx_info(ctx)["flags"][0] & 2
    assert len(ctx) < 0.5 * len(codec.rans_encode(m, 6))


def test_column_scales_beat_order0():
    """Columns whose magnitudes differ (mlp.proj's case): the column-activity contexts pay."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((256, 256)) * np.exp(rng.uniform(-1.2, 1.2, 256))[None, :]
    m = np.clip(np.round(w / w.std() * 31 / 4), -31, 31).astype(np.int8)
    assert len(roundtrip([m], 6)) < 0.97 * len(codec.rans_encode(m, 6))


def test_column_offsets_beat_order0():
    """Columns with a signed offset (the tied embedding's per-dimension means): the column
    contexts (its running signed mean, the values above) pay far below order-0."""
    rng = np.random.default_rng(8)
    noise = rng.standard_normal((512, 128)) * 2.0
    shifted = np.clip(np.round(noise + rng.uniform(-8, 8, 128)[None, :]), -63, 63).astype(np.int8)
    assert len(roundtrip([shifted], 7, 0)) < 0.85 * len(codec.rans_encode(shifted, 7))


def test_rejects_unknown_model_versions():
    data = bytearray(codec.ctx_encode([np.zeros((2, 3), np.int8)], 6))
    assert data[3] == 3
    for version in (1, 4):
        data[3] = version
        with pytest.raises(codec.CodecError, match=f"version {version} .this build reads 2 and 3"):
            codec.ctx_decode(bytes(data))


def test_iid_codes_cost_little_over_order0():
    rng = np.random.default_rng(6)
    m = gauss(rng, (256, 256), 6, spread=12.85)
    assert len(roundtrip([m], 6, 0)) < 1.01 * len(codec.rans_encode(m, 6))


def golden_cases():
    rng = np.random.default_rng(77)
    return {
        "gauss6_plain": (6, 0, [gauss(rng, (9, 37), 6)], None),
        "gauss5_transposed": (5, 1, [gauss(rng, (6, 11), 5)], None),
        "dup7_permuted_pair": (7, 3, [np.repeat(gauss(rng, (3, 20), 7), 3, axis=0), gauss(rng, (4, 5), 7)], None),
        "int2_auto": (2, None, [gauss(rng, (5, 13), 2, 1.0), np.zeros((0, 2), np.int8)], None),
        "prior6_auto": (6, None, [gauss(rng, (8, 12), 6), gauss(rng, (6, 12), 6)],
                        [np.arange(12) % 16, None]),
        "prior6_transposed_permuted": (6, 3, [gauss(rng, (7, 10), 6)], [rng.integers(0, 16, 10)]),
    }


def test_golden_streams():
    """The encoder's exact bytes for fixed inputs, and their decoding (a changed model, table or
    layout breaks old artifacts: bump the stream version instead)."""
    golden = json.loads(GOLDEN.read_text())
    cases = golden_cases()
    assert sorted(golden) == sorted(cases)
    for name, (bits, flags, mats, priors) in cases.items():
        g = golden[name]
        assert g["bits"] == bits and g["shapes"] == [list(m.shape) for m in mats]
        data = bytes.fromhex(g["stream"])
        assert codec.ctx_encode(mats, bits, force_flags=flags, priors=priors) == data, name
        for a, b in zip(mats, codec.ctx_decode(data, priors=priors)):
            np.testing.assert_array_equal(a, b)


def test_version_2_golden_streams_still_decode():
    """Streams of the previous model (version 2, written by earlier pgolf into format-v3/v4
    artifacts) decode to their inputs exactly."""
    golden = json.loads(GOLDEN_V2.read_text())
    cases = golden_cases()
    assert sorted(golden) == ["dup7_permuted_pair", "gauss5_transposed", "gauss6_plain", "int2_auto"]
    for name, g in golden.items():
        bits, _, mats, _ = cases[name]
        data = bytes.fromhex(g["stream"])
        assert codec.ctx_info(data)["version"] == 2 and g["bits"] == bits
        out = codec.ctx_decode(data)
        assert len(out) == len(mats)
        for a, b in zip(mats, out):
            np.testing.assert_array_equal(a, b)


def write_golden():  # python -c "import tests.test_codec_ctx as t; t.write_golden()"
    out = {name: {"bits": bits, "shapes": [list(m.shape) for m in mats],
                  "stream": codec.ctx_encode(mats, bits, force_flags=flags, priors=priors).hex()}
           for name, (bits, flags, mats, priors) in golden_cases().items()}
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
