"""pgolf.codec context-modelled coder (csrc/ctxcoder.h): exact round trips for every variant,
golden streams, the documented header, input errors, the variant choice, and that the contexts
pay where weight-matrix structure exists (near-duplicate rows, column scales) and cost little
where it does not. Hostile input is in tests/test_codec_fuzz.py."""
import json
from pathlib import Path

import numpy as np
import pytest

from pgolf import codec

GOLDEN = Path(__file__).parent / "golden" / "codec_ctx.json"


def gauss(rng, shape, bits, spread=3.0):
    q = 2 ** (bits - 1) - 1
    return np.clip(np.round(rng.standard_normal(shape) * q / spread), -q - 1, q).astype(np.int8)


def roundtrip(mats, bits, flags=None):
    data = codec.ctx_encode(mats, bits, force_flags=flags)
    out = codec.ctx_decode(data)
    assert len(out) == len(mats)
    for a, b in zip(mats, out):
        assert b.dtype == np.int8 and b.shape == a.shape
        np.testing.assert_array_equal(a, b)
    return data


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7, 8])
@pytest.mark.parametrize("flags", [None, 0, 1, 2, 3])
def test_roundtrip_every_variant_and_width(bits, flags):
    rng = np.random.default_rng(bits * 10 + (flags or 0))
    mats = [gauss(rng, s, bits) for s in [(7, 9), (1, 5), (5, 1), (0, 3), (3, 0), (33, 64), (64, 17)]]
    data = roundtrip(mats, bits, flags)
    info = codec.ctx_info(data)
    assert info["bits"] == bits and info["shapes"] == [m.shape for m in mats]
    if flags is not None:  # empty matrices keep flags 0
        assert info["flags"] == [flags if m.size else 0 for m in mats]


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
    assert data[:5] == b"PGC\x02\x04"
    assert data[5:9] == bytes([1, 3, 4, 2])  # K = 1, rows 3, cols 4, flags permuted
    # row order of 3 rows: 2 bits each, LSB first, in one byte; coded row i is row perm[i]
    perm = [(data[9] >> (2 * i)) & 3 for i in range(3)]
    assert sorted(perm) == [0, 1, 2] and perm[0] == 0


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


def test_rejects_a_row_order_that_is_not_a_permutation():
    m = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    data = bytearray(codec.ctx_encode([m], 4, force_flags=2))
    data[9] = 0b000000  # rows 0, 0, 0
    with pytest.raises(codec.CodecError, match="permutation"):
        codec.ctx_decode(bytes(data))
    data[9] = 0b01100100  # rows 0, 1, 2 and a nonzero padding bit above the 6 used
    with pytest.raises(codec.CodecError, match="padding"):
        codec.ctx_decode(bytes(data))


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


def test_rejects_the_first_model_version():
    data = bytearray(codec.ctx_encode([np.zeros((2, 3), np.int8)], 6))
    assert data[3] == 2
    data[3] = 1
    with pytest.raises(codec.CodecError, match="version 1"):
        codec.ctx_decode(bytes(data))


def test_iid_codes_cost_little_over_order0():
    rng = np.random.default_rng(6)
    m = gauss(rng, (256, 256), 6, spread=12.85)
    assert len(roundtrip([m], 6, 0)) < 1.01 * len(codec.rans_encode(m, 6))


def golden_cases():
    rng = np.random.default_rng(77)
    return {
        "gauss6_plain": (6, 0, [gauss(rng, (9, 37), 6)]),
        "gauss5_transposed": (5, 1, [gauss(rng, (6, 11), 5)]),
        "dup7_permuted_pair": (7, 3, [np.repeat(gauss(rng, (3, 20), 7), 3, axis=0), gauss(rng, (4, 5), 7)]),
        "int2_auto": (2, None, [gauss(rng, (5, 13), 2, 1.0), np.zeros((0, 2), np.int8)]),
    }


def test_golden_streams():
    """The encoder's exact bytes for fixed inputs, and their decoding (a changed model, table or
    layout breaks old artifacts: bump the stream version instead)."""
    golden = json.loads(GOLDEN.read_text())
    cases = golden_cases()
    assert sorted(golden) == sorted(cases)
    for name, (bits, flags, mats) in cases.items():
        g = golden[name]
        assert g["bits"] == bits and g["shapes"] == [list(m.shape) for m in mats]
        data = bytes.fromhex(g["stream"])
        assert codec.ctx_encode(mats, bits, force_flags=flags) == data, name
        for a, b in zip(mats, codec.ctx_decode(data)):
            np.testing.assert_array_equal(a, b)


def write_golden():  # python -c "import tests.test_codec_ctx as t; t.write_golden()"
    out = {name: {"bits": bits, "shapes": [list(m.shape) for m in mats],
                  "stream": codec.ctx_encode(mats, bits, force_flags=flags).hex()}
           for name, (bits, flags, mats) in golden_cases().items()}
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
