"""Decoders against hostile input: thousands of random, truncated, bit-flipped and spliced
streams must decode or raise CodecError, never crash, hang or raise anything else.
Run under scripts/sanitize.sh to catch out-of-bounds reads as well."""
import json
from pathlib import Path

import numpy as np
import pytest

from pgolf import codec

LIMIT = 1 << 20  # bound on declared values, so a mutated header cannot ask for gigabytes


def corpus():
    rng = np.random.default_rng(123)
    out = []
    for bits in (2, 4, 5, 6, 8):
        qmax = 2 ** (bits - 1) - 1
        for shape in [(1, 1), (3, 17), (16, 40), (40, 9), (70,)]:
            w = rng.standard_normal(shape) * rng.uniform(0.3, 3, shape[:1] + (1,) * (len(shape) - 1))
            out.append(codec.rans_encode(np.clip(np.round(w * qmax / 3), -qmax, qmax).astype(np.int8), bits))
    halves = np.concatenate([rng.integers(-1, 2, (8, 64)), rng.integers(-31, 32, (8, 64))]).astype(np.int8)
    out += [codec.rans_encode(halves, 6), codec.rans_encode(halves[np.arange(16).reshape(2, 8).T.reshape(-1)], 6),
            codec.rans_encode(np.zeros((4, 6), np.int8), 6), codec.rans_encode(np.zeros((0, 3), np.int8), 6)]
    # joint streams (rans_encode_set): grouping "segments", one group per tensor or cluster
    rng = np.random.default_rng(123)
    parts = [np.clip(np.round(rng.standard_normal((n, 64)) * s), -31, 31).astype(np.int8)
             for n, s in [(4, 2), (8, 9), (2, 2), (4, 20), (6, 9), (4, 2), (8, 20), (2, 9)]]
    joint, _ = codec.rans_encode_set(parts, 6)
    assert joint is not None and codec.rans_info(joint)["grouping"] == "segments"
    out.append(joint)
    return out


def decode_or_codec_error(data):
    try:
        codec.rans_info(data)
    except codec.CodecError:
        pass
    try:
        y = codec.rans_decode(data, max_values=LIMIT)
    except codec.CodecError:
        return None
    assert y.dtype == np.int8 and y.size <= LIMIT
    return y


def test_every_truncation_raises_codec_error():
    for data in corpus():
        for n in range(len(data)):
            with pytest.raises(codec.CodecError):
                codec.rans_decode(data[:n], max_values=LIMIT)


def test_trailing_bytes_raise_codec_error():
    for data in corpus():
        for extra in (b"\0", b"\0\0", b"\x01\x02\x03\x04"):
            with pytest.raises(codec.CodecError):
                codec.rans_decode(data + extra, max_values=LIMIT)


def test_mutated_and_random_streams():
    rng = np.random.default_rng(2024)
    streams = corpus()
    detected = total = 0
    for _ in range(6000):
        a = bytearray(streams[rng.integers(len(streams))])
        kind = rng.integers(6)
        if kind == 0:  # flip 1..3 bits anywhere
            for _ in range(rng.integers(1, 4)):
                i = rng.integers(len(a) * 8)
                a[i // 8] ^= 1 << (i % 8)
        elif kind == 1:  # flip a bit in the header and tables, where the fields are
            i = rng.integers(min(len(a), 40) * 8)
            a[i // 8] ^= 1 << (i % 8)
        elif kind == 2:  # splice two streams
            b = streams[rng.integers(len(streams))]
            a = a[:rng.integers(len(a) + 1)] + b[rng.integers(len(b) + 1):]
        elif kind == 3:  # random bytes after a valid head
            a = a[:rng.integers(3, 13)] + bytearray(rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8))
        elif kind == 4:  # insert or delete a byte
            i = rng.integers(len(a))
            a = a[:i] + a[i + 1:] if rng.integers(2) else a[:i] + bytes([rng.integers(256)]) + a[i:]
        else:  # pure garbage
            a = bytearray(rng.integers(0, 256, rng.integers(0, 64), dtype=np.uint8))
        total += 1
        detected += decode_or_codec_error(bytes(a)) is None
    assert detected > 0.9 * total, (detected, total)


def test_unpack_bits_rejects_wrong_lengths_and_never_overreads():
    rng = np.random.default_rng(5)
    for _ in range(3000):
        bits = int(rng.integers(2, 9))
        count = int(rng.integers(0, 200))
        n = (count * bits + 7) // 8 + int(rng.integers(-3, 4))
        data = rng.integers(0, 256, max(n, 0), dtype=np.uint8).tobytes()
        try:
            y = codec.unpack_bits(data, bits, count)
        except codec.CodecError:
            continue
        assert y.shape == (count,) and len(data) == (count * bits + 7) // 8
        assert codec.pack_bits(y, bits) == data


def ctx_corpus():
    rng = np.random.default_rng(321)
    out = []
    for bits in (2, 5, 6, 8):
        q = 2 ** (bits - 1) - 1
        mats = [np.clip(np.round(rng.standard_normal(s) * q / 3), -q - 1, q).astype(np.int8)
                for s in [(1, 1), (3, 17), (16, 40), (9, 4)]]
        for flags in (None, 0, 1, 2, 3):
            out.append(codec.ctx_encode(mats, bits, force_flags=flags))
        for flags in (None, 1, 2):  # with column priors (the decoder gets fuzz_priors())
            out.append(codec.ctx_encode(mats, bits, force_flags=flags, priors=fuzz_priors([m.shape for m in mats])))
    protos = rng.integers(-20, 21, (4, 32))
    out.append(codec.ctx_encode([protos[rng.integers(0, 4, 24)].astype(np.int8)], 6))
    out += [codec.ctx_encode([], 6), codec.ctx_encode([np.zeros((0, 3), np.int8)], 6)]
    golden_v2 = json.loads((Path(__file__).parent / "golden" / "codec_ctx_v2.json").read_text())
    out += [bytes.fromhex(g["stream"]) for g in golden_v2.values()]  # the previous model, still decoded
    return out


def fuzz_priors(shapes):
    """Column priors for every matrix of a stream of these shapes: classes 0..15 in turn."""
    return [np.arange(cols) % 16 for _, cols in shapes]


def ctx_decode_or_codec_error(data):
    try:
        priors = fuzz_priors(codec.ctx_info(data)["shapes"])
    except codec.CodecError:
        priors = None
    try:
        out = codec.ctx_decode(data, max_values=LIMIT, priors=priors)
    except codec.CodecError:
        return None
    assert all(a.dtype == np.int8 and a.ndim == 2 for a in out) and sum(a.size for a in out) <= LIMIT
    return out


def test_ctx_every_truncation_and_trailing_bytes_raise_codec_error():
    for data in ctx_corpus():
        priors = fuzz_priors(codec.ctx_info(data)["shapes"])
        for n in range(len(data)):
            with pytest.raises(codec.CodecError):
                codec.ctx_decode(data[:n], max_values=LIMIT, priors=priors)
        for extra in (b"\0", b"\x01\x02\x03\x04"):
            with pytest.raises(codec.CodecError):
                codec.ctx_decode(data + extra, max_values=LIMIT, priors=priors)


def test_ctx_mutated_and_random_streams():
    """Header mutations must be caught; a mutated arithmetic-coded payload may decode to other
    values (it has no checksum: the artifact's SHA-256 covers that), but never crash or overrun."""
    rng = np.random.default_rng(4048)
    streams = ctx_corpus()
    header_detected = header_total = 0
    for _ in range(6000):
        a = bytearray(streams[rng.integers(len(streams))])
        kind = rng.integers(5)
        if kind == 0:  # flip 1..3 bits anywhere
            for _ in range(rng.integers(1, 4)):
                i = rng.integers(len(a) * 8)
                a[i // 8] ^= 1 << (i % 8)
        elif kind == 1:  # flip a bit of the magic, version, bits or matrix count
            i = rng.integers(min(len(a), 6) * 8)
            a[i // 8] ^= 1 << (i % 8)
            header_total += 1
            header_detected += ctx_decode_or_codec_error(bytes(a)) is None
            continue
        elif kind == 2:  # splice two streams
            b = streams[rng.integers(len(streams))]
            a = a[:rng.integers(len(a) + 1)] + b[rng.integers(len(b) + 1):]
        elif kind == 3:  # random bytes after a valid head
            a = a[:rng.integers(3, 12)] + bytearray(rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8))
        else:  # pure garbage behind the magic and a version this build reads
            a = bytearray(b"PGC" + bytes([int(rng.integers(2, 4))]))
            a += bytearray(rng.integers(0, 256, rng.integers(0, 64), dtype=np.uint8))
        ctx_decode_or_codec_error(bytes(a))
    assert header_detected > 0.9 * header_total, (header_detected, header_total)
