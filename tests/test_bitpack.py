"""pgolf.codec bit packing: byte layout (golden + bit-level reference), round trips, errors, fallback."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf import codec

GOLDEN = Path(__file__).parent / "golden" / "codec_bitpack.json"


def reference_pack(values, bits):
    """The layout of csrc/bitpack.h, bit by bit: v + 2**(bits-1), LSB-first little-endian stream."""
    out = bytearray((len(values) * bits + 7) // 8)
    for i, v in enumerate(values):
        u = int(v) + (1 << (bits - 1))
        for b in range(bits):
            k = i * bits + b
            out[k // 8] |= ((u >> b) & 1) << (k % 8)
    return bytes(out)


def golden_values(bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return [lo, hi, 0, -1, 1] + [lo + (7 * i) % (hi - lo + 1) for i in range(14)]


def test_worked_example_from_header():
    assert codec.pack_bits(np.array([-32, 0, 31, 1], np.int8), 6) == bytes([0x00, 0xF8, 0x87])


def test_golden_bytes_pin_the_layout():
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == [str(b) for b in range(2, 9)]
    for bits in range(2, 9):
        values = golden_values(bits)
        assert golden[str(bits)] == reference_pack(values, bits).hex()
        assert codec.pack_bits(np.array(values, np.int8), bits).hex() == golden[str(bits)]


@pytest.mark.parametrize("bits", range(2, 9))
def test_matches_reference_and_round_trips(bits):
    rng = np.random.default_rng(bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for n in list(range(0, 41)) + [63, 64, 65, 1023, 1024, 1025, 8191, 8197]:
        x = rng.integers(lo, hi + 1, n).astype(np.int8)
        data = codec.pack_bits(x, bits)
        assert len(data) == codec.packed_size(n, bits) == (n * bits + 7) // 8
        if n <= 64:
            assert data == reference_pack(x, bits)
        y = codec.unpack_bits(data, bits, n)
        assert y.dtype == np.int8 and y.shape == (n,)
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_value_in_range_round_trips(bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = np.arange(lo, hi + 1, dtype=np.int8).repeat(3)
    np.testing.assert_array_equal(codec.unpack_bits(codec.pack_bits(x, bits), bits, x.size), x)


def test_torch_tensors_shapes_and_noncontiguous_inputs():
    rng = np.random.default_rng(0)
    x = rng.integers(-16, 16, (37, 11)).astype(np.int8)
    t = torch.from_numpy(x)
    assert codec.pack_bits(t, 5) == codec.pack_bits(x, 5) == codec.pack_bits(x.reshape(-1), 5)
    assert codec.pack_bits(t.T, 5) == codec.pack_bits(np.ascontiguousarray(x.T), 5)
    assert codec.pack_bits(x[:, ::2], 5) == codec.pack_bits(np.ascontiguousarray(x[:, ::2]), 5)
    y = torch.from_numpy(codec.unpack_bits(bytearray(codec.pack_bits(t, 5)), 5, x.size)).reshape(37, 11)
    assert torch.equal(y, t)
    assert np.array_equal(codec.unpack_bits(memoryview(codec.pack_bits(x, 5)), 5, x.size), x.reshape(-1))


@pytest.mark.parametrize("bits", range(2, 8))
def test_out_of_range_names_first_index_and_value(bits):
    hi = (1 << (bits - 1)) - 1
    x = np.zeros(3000, np.int8)
    x[2051], x[2900] = hi + 1, -hi - 2
    with pytest.raises(ValueError, match=rf"value {hi + 1} at index 2051 is outside the {bits}-bit range"):
        codec.pack_bits(x, bits)
    x[2051] = 0
    with pytest.raises(ValueError, match=rf"value {-hi - 2} at index 2900"):
        codec.pack_bits(x, bits)
    tail = np.zeros(13, np.int8)
    tail[12] = hi + 1
    with pytest.raises(ValueError, match="at index 12 "):
        codec.pack_bits(tail, bits)


def test_bad_arguments():
    with pytest.raises(TypeError, match="int8"):
        codec.pack_bits(np.zeros(4, np.int16), 6)
    with pytest.raises(TypeError, match="int8"):
        codec.pack_bits(torch.zeros(4, dtype=torch.int32), 6)
    for bits in (1, 9, 6.0, True):
        with pytest.raises(ValueError, match="bits"):
            codec.pack_bits(np.zeros(4, np.int8), bits)
    with pytest.raises(ValueError, match="count"):
        codec.unpack_bits(b"", 6, -1)


def test_wrong_length_and_padding_raise_codec_error():
    data = codec.pack_bits(np.arange(-8, 8, dtype=np.int8).repeat(3)[:45], 5)  # 225 bits -> 29 bytes
    assert len(data) == 29
    for bad in (data[:-1], data + b"\0", b""):
        with pytest.raises(codec.CodecError, match="need exactly 29"):
            codec.unpack_bits(bad, 5, 45)
    with pytest.raises(codec.CodecError, match="padding"):
        codec.unpack_bits(data[:-1] + bytes([data[-1] | 0x80]), 5, 45)
    with pytest.raises(codec.CodecError, match="need exactly"):
        codec.unpack_bits(b"\0" * 10, 6, 1 << 40)
    with pytest.raises(ValueError, match="count too large"):
        codec.unpack_bits(b"\0" * 10, 6, 1 << 62)


def test_missing_extension_raises_codec_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pgolf._codec", None)
    assert not codec.available()
    calls = [lambda: codec.pack_bits(np.zeros(3, np.int8), 6), lambda: codec.unpack_bits(b"", 6, 0),
             lambda: codec.rans_encode(np.zeros((2, 2), np.int8), 6), lambda: codec.rans_decode(b"PGR")]
    for call in calls:
        with pytest.raises(codec.CodecUnavailable, match=r"not built.*pip install -e \..*build_ext --inplace"):
            call()
    assert issubclass(codec.CodecUnavailable, RuntimeError)
