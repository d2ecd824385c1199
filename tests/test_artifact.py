"""pgolf.artifact: golden bytes of the v5 and v2 formats (and reading v1, v3, v4), round trips for
every codec and version, joint rANS and context-coded payloads with column priors, the side
stream, v5 never larger than v2, and every corruption the loader must name."""
import hashlib
import json
import lzma
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf import codec
from pgolf.artifact.format import MAGIC, ArtifactError, load_artifact, save_artifact
from pgolf.artifact.index import codes_payload_bytes, read_index
from pgolf.quant.qtensor import QTensor

GOLDEN = Path(__file__).parent / "golden" / "artifact_v2.pgolf"
GOLDEN_V3 = Path(__file__).parent / "golden" / "artifact_v3.pgolf"
GOLDEN_V1 = Path(__file__).parent / "golden" / "artifact_v1.pgolf"
GOLDEN_V4 = Path(__file__).parent / "golden" / "artifact_v4.pgolf"
GOLDEN_V5 = Path(__file__).parent / "golden" / "artifact_v5.pgolf"
# Version 3 as written before rans artifacts left zstd out (its index is zstd-compressed): still read.
GOLDEN_V3_ZSTD = Path(__file__).parent / "golden" / "artifact_v3_zstd_index.pgolf"


def qtensor(shape, bits, seed, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).reshape(shape[0], -1)
    scale = (np.abs(w).max(1) / (2 ** (bits - 1) - 1)).astype(np.float16)
    qmax = 2 ** (bits - 1) - 1
    codes = np.clip(np.round(w / scale.astype(np.float32)[:, None]), -qmax, qmax).astype(np.int8)
    return QTensor(codes=torch.from_numpy(codes), scale=torch.from_numpy(scale), bits=bits, shape=tuple(shape), dtype=dtype)


def golden_inputs(version=2):
    tensors = {
        "blocks.0.attn.qkv.weight": qtensor((12, 16), 6, 0),
        "blocks.0.mlp.fc.weight": qtensor((4, 2, 8), 5, 1, torch.bfloat16),
        "blocks.0.attn_scale": torch.linspace(-1, 1, 4),
        "skip_weights": torch.tensor([0.5, -2.25, 3.0], dtype=torch.bfloat16),
        "step": torch.tensor(1234, dtype=torch.int64),
    }
    if version >= 2:  # two int6 tensors with cols a multiple of 64: one joint rANS payload
        tensors["blocks.0.mlp.proj.weight"] = qtensor((4, 64), 6, 6)
        tensors["tok_emb.weight"] = qtensor((3, 128), 6, 7)
    if version >= 4:  # LQER factors of blocks.0.mlp.proj.weight (4 x 64) at rank 2, on the record's grids
        tensors["blocks.0.mlp.proj.weight.lqer_a"] = lqer_factor((2, 4), 2, seed=8, one_scale=True)
        tensors["blocks.0.mlp.proj.weight.lqer_b"] = lqer_factor((2, 64), 4, seed=9, one_scale=False)
    if version >= 5:  # a block whose mlp.proj columns follow the mlp.fc row scales: a column prior
        tensors.update(prior_block(seed=10))
    return {"model_dim": 16, "num_layers": 1}, tensors, {"val_bpb": 1.25, "note": "golden"}


def prior_block(seed, layers=(1,), hidden=256, dim=8):
    """``blocks.L.mlp.fc`` / ``mlp.proj`` pairs whose proj column magnitudes follow the fc row
    scales (a hidden unit's importance shows in both), quantised with max-abs rows at int6."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in layers:
        unit = np.exp(rng.uniform(-2, 2, hidden))
        out[f"blocks.{layer}.mlp.fc.weight"] = quantised(rng.standard_normal((hidden, dim)) * unit[:, None], 6)
        out[f"blocks.{layer}.mlp.proj.weight"] = quantised(rng.standard_normal((dim, hidden)) * unit[None, :], 6)
    return out


def quantised(w, bits):
    qmax = 2 ** (bits - 1) - 1
    scale = (np.abs(w).max(1) / qmax).astype(np.float16)
    codes = np.clip(np.round(w / scale.astype(np.float32)[:, None]), -qmax, qmax).astype(np.int8)
    return QTensor(codes=torch.from_numpy(codes), scale=torch.from_numpy(scale), bits=bits, shape=w.shape,
                   dtype=torch.float32)


def lqer_factor(shape, bits, *, seed, one_scale):
    """A QTensor on LQER's two's-complement grid ``[-2^(b-1), 2^(b-1) - 1]`` (fixed codes, no SVD)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=shape).astype(np.int8)
    scale = np.full(shape[0], 0.125, np.float16) if one_scale else rng.uniform(0.01, 0.1, shape[0]).astype(np.float16)
    return QTensor(codes=torch.from_numpy(codes), scale=torch.from_numpy(scale), bits=bits, shape=shape,
                   dtype=torch.float32)


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, QTensor):
        assert (a.bits, a.shape, a.dtype) == (b.bits, b.shape, b.dtype)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
    else:
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("version", [2, 5])
def test_golden_bytes_pin_the_format(tmp_path, version):
    golden = {2: GOLDEN, 5: GOLDEN_V5}[version]
    config, tensors, meta = golden_inputs(version=version)
    info = save_artifact(tmp_path / "a.pgolf", config=config, tensors=tensors, meta=meta,
                         version=2 if version == 2 else None)  # 5: the writer's own choice
    assert (tmp_path / "a.pgolf").read_bytes() == golden.read_bytes(), "artifact format changed: a visible decision"
    assert info.total_bytes == os.path.getsize(tmp_path / "a.pgolf") == golden.stat().st_size
    art = load_artifact(golden, expected={k: tuple(v.shape) for k, v in tensors.items()})
    assert art.config == config and art.meta == meta and list(art.tensors) == list(tensors)
    for name, t in tensors.items():
        assert_same(art.tensors[name], t)


@pytest.mark.parametrize("version", [3, 4])
def test_versions_3_and_4_are_still_read(version):
    """Files of earlier pgolf (their context-coded payloads are version-2 streams) load exactly."""
    golden = {3: GOLDEN_V3, 4: GOLDEN_V4}[version]
    config, tensors, meta = golden_inputs(version=version)
    assert struct.unpack_from("<I", golden.read_bytes(), 8)[0] == version
    art = load_artifact(golden, expected={k: tuple(v.shape) for k, v in tensors.items()})
    assert art.config == config and art.meta == meta and list(art.tensors) == list(tensors)
    for name, t in tensors.items():
        assert_same(art.tensors[name], t)


def test_golden_v5_codes_with_a_column_prior():
    """The golden v5 file context-codes the prior block's mlp.proj with the column prior of the
    mlp.fc row scales (the writer kept it: smaller than without)."""
    _, header = index_of(GOLDEN_V5.read_bytes())
    refs = {e["name"]: e["codes"] for e in header["tensors"] if e["kind"] == "q"}
    assert refs["blocks.1.mlp.proj.weight"]["codec"] == "ctx"
    assert refs["blocks.1.mlp.proj.weight"]["prior"] == "blocks.1.mlp.fc.weight"
    ctx = header["ctx"][refs["blocks.1.mlp.proj.weight"]["ctx"]]
    data = GOLDEN_V5.read_bytes()
    hlen = struct.unpack_from("<I", data, 12)[0]
    stream = data[16 + hlen + ctx["offset"]:16 + hlen + ctx["offset"] + ctx["length"]]
    info = codec.ctx_info(stream)  # blocks.0.mlp.proj (no matrix in its block feeds it) has none
    assert info["version"] == 3 and [f & 4 for f in info["flags"]] == [0, 4]


def test_version_1_files_are_still_read():
    config, tensors, meta = golden_inputs(version=1)
    assert struct.unpack_from("<I", GOLDEN_V1.read_bytes(), 8)[0] == 1
    art = load_artifact(GOLDEN_V1, expected={k: tuple(v.shape) for k, v in tensors.items()})
    assert art.config == config and art.meta == meta and list(art.tensors) == list(tensors)
    for name, t in tensors.items():
        assert_same(art.tensors[name], t)


def test_v3_files_with_a_zstd_index_are_still_read():
    config, tensors, meta = golden_inputs()
    assert GOLDEN_V3_ZSTD.read_bytes()[16] == 1  # header method 1: zstd
    art = load_artifact(GOLDEN_V3_ZSTD, expected={k: tuple(v.shape) for k, v in tensors.items()})
    assert art.config == config and art.meta == meta
    for name, t in tensors.items():
        assert_same(art.tensors[name], t)


def test_a_rans_artifact_is_written_and_read_without_zstandard(tmp_path, monkeypatch):
    """Only codec="zstd" writes zstd: a rans artifact's index and side stream are the standard
    library's (a bundled submission writes and reads it where zstandard is not installed)."""
    config, tensors, meta = golden_inputs()
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now fails
    save_artifact(tmp_path / "a.pgolf", config=config, tensors=tensors, meta=meta, codec="rans")
    _, header = index_of((tmp_path / "a.pgolf").read_bytes())
    assert header["side"]["codec"] in ("lzma2", "lzma", "zlib", "raw")
    art = load_artifact(tmp_path / "a.pgolf")
    for name, t in tensors.items():
        assert_same(art.tensors[name], t)


def test_layout_prefix_header_and_checksum():
    data = GOLDEN.read_bytes()
    magic, version, hlen = struct.unpack_from("<8sII", data)
    assert (magic, version) == (MAGIC, 2)
    header = json.loads(data[16:16 + hlen])
    assert len(data) == 16 + hlen + header["payload_bytes"] + 32
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    kinds = {e["name"]: (e["kind"], (e.get("codes") or e.get("data"))["codec"]) for e in header["tensors"]}
    assert kinds["blocks.0.attn.qkv.weight"] == ("q", "rans") and kinds["step"][0] == "raw"
    assert kinds["blocks.0.mlp.proj.weight"] == kinds["tok_emb.weight"] == ("q", "joint")
    assert [j["codec"] for j in header["joint"]] == ["rans"]


def test_joint_payload_of_many_small_tensors_is_smaller_and_exact(tmp_path):
    tensors = {f"w{i}": qtensor((64 * (1 + i % 3), 128), 6, 20 + i) for i in range(8)}
    tensors["w5bits"] = qtensor((32, 64), 5, 40)
    tensors["odd"] = qtensor((16, 48), 6, 41)  # cols not a multiple of 64: its own stream
    info = save_artifact(tmp_path / "m.pgolf", config={}, tensors=tensors, version=2)
    data = (tmp_path / "m.pgolf").read_bytes()
    header = json.loads(data[16:16 + struct.unpack_from("<I", data, 12)[0]])
    codecs = {e["name"]: e["codes"]["codec"] for e in header["tensors"]}
    assert codecs["odd"] == "rans" and codecs["w5bits"] == "rans" and {codecs[f"w{i}"] for i in range(8)} == {"joint"}
    assert len(header["joint"]) == 1 and sum(info.tensor_bytes.values()) == header["payload_bytes"]
    codes = codes_payload_bytes(read_index(tmp_path / "m.pgolf"))
    assert codes["odd"] == header["tensors"][list(tensors).index("odd")]["codes"]["length"]
    assert sum(codes[f"w{i}"] for i in range(8)) == header["joint"][0]["length"]
    separate = sum(len(codec.rans_encode(t.codes, 6, scales=t.scale)) for n, t in tensors.items() if n.startswith("w") and n != "w5bits")
    assert header["joint"][0]["length"] < separate
    art = load_artifact(tmp_path / "m.pgolf", expected={k: tuple(v.shape) for k, v in tensors.items()})
    for name, t in tensors.items():
        assert_same(art.tensors[name], t)


@pytest.mark.parametrize("version", [2, 5])
@pytest.mark.parametrize("codec", ["rans", "zstd", "zlib", "raw"])
def test_round_trip_every_codec_and_dtype(tmp_path, codec, version):
    tensors = {
        "wq": qtensor((48, 80), 6, 2), "w5": qtensor((33, 7), 5, 3, torch.float16), "w8": qtensor((8, 3, 5), 8, 4),
        "w_row": qtensor((1, 64), 4, 5), "w_empty": QTensor(codes=torch.zeros(0, 4, dtype=torch.int8),
                                                          scale=torch.zeros(0, dtype=torch.float16), bits=6,
                                                          shape=(0, 4), dtype=torch.float32),
        "f32": torch.randn(7, 3), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2).bfloat16(),
        "f64": torch.randn(3, dtype=torch.float64), "i8": torch.arange(-5, 5, dtype=torch.int8),
        "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3), "u8": torch.arange(4, dtype=torch.uint8),
        "flag": torch.tensor([True, False]), "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 5),
        "big_smooth": torch.zeros(4096),
    }
    path = tmp_path / "model.pgolf"
    info = save_artifact(path, config={"vocab_size": 1024}, tensors=tensors, codec=codec, meta={"run": "t"},
                         version=version)
    assert info.total_bytes == os.path.getsize(path)
    assert set(info.tensor_bytes) == set(tensors) and sum(info.tensor_bytes.values()) < info.total_bytes
    qs = {n for n, t in tensors.items() if isinstance(t, QTensor)}
    codes = codes_payload_bytes(read_index(path))
    assert set(codes) == qs and all(codes[n] <= info.tensor_bytes[n] for n in qs)
    assert os.listdir(tmp_path) == ["model.pgolf"]  # no temporary file left behind
    art = load_artifact(path, expected={k: tuple(v.shape) for k, v in tensors.items()})
    for name, t in tensors.items():
        assert_same(art.tensors[name], t)
    assert info.tensor_bytes["big_smooth"] < (4096 * 4 if codec != "raw" else 4096 * 4 + 1)


def test_rans_beats_zlib_and_overwrites_atomically(tmp_path):
    tensors = {"w": qtensor((256, 256), 6, 9)}
    path = tmp_path / "m.pgolf"
    zlib_size = save_artifact(path, config={}, tensors=tensors, codec="zlib").total_bytes
    rans_size = save_artifact(path, config={}, tensors=tensors, codec="rans").total_bytes
    assert rans_size < zlib_size and os.path.getsize(path) == rans_size


def test_bad_arguments(tmp_path):
    _, tensors, _ = golden_inputs()
    with pytest.raises(ValueError, match="version must be one of"):
        save_artifact(tmp_path / "x.pgolf", config={}, tensors=tensors, version=1)
    with pytest.raises(ValueError, match="codec must be one of"):
        save_artifact(tmp_path / "a", config={}, tensors=tensors, codec="brotli")
    with pytest.raises(ValueError, match="JSON"):
        save_artifact(tmp_path / "a", config={"x": object()}, tensors=tensors)
    with pytest.raises(TypeError, match="QTensor or torch.Tensor"):
        save_artifact(tmp_path / "a", config={}, tensors={"x": np.zeros(3)})
    with pytest.raises(ArtifactError, match="dtype"):
        save_artifact(tmp_path / "a", config={}, tensors={"x": torch.zeros(2, dtype=torch.complex64)})
    assert not (tmp_path / "a").exists()


def corrupt(tmp_path, data, name="bad.pgolf"):
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def resealed(data):
    """``data`` with its checksum recomputed (corruption the checksum cannot see)."""
    return bytes(data[:-32]) + hashlib.sha256(bytes(data[:-32])).digest()


def test_corruption_is_named(tmp_path):
    good = GOLDEN.read_bytes()
    hlen = struct.unpack_from("<I", good, 12)[0]
    cases = [
        (b"NOTPGOLF" + good[8:], "bad magic"),
        (good[:8] + struct.pack("<I", 6) + good[12:], "unsupported artifact format version 6"),
        (good[:10], "truncated"),
        (good[:16 + hlen // 2], "truncated"),
        (good[:16 + hlen + 5], "truncated"),
        (good[:-1], "truncated"),
        (good + b"\0", "unexpected bytes after"),
        (good[:-40] + bytes([good[-40] ^ 1]) + good[-39:], "checksum mismatch"),
        (good[:20] + bytes([good[20] ^ 4]) + good[21:], "checksum mismatch"),
        (good[:-1] + bytes([good[-1] ^ 0x80]), "checksum mismatch"),
    ]
    for data, message in cases:
        with pytest.raises(ArtifactError, match=message):
            load_artifact(corrupt(tmp_path, data))


def test_corruption_behind_a_valid_checksum_is_named(tmp_path):
    good = GOLDEN.read_bytes()
    hlen = struct.unpack_from("<I", good, 12)[0]
    header = json.loads(good[16:16 + hlen])
    qkv = header["tensors"][[e["name"] for e in header["tensors"]].index("blocks.0.attn.qkv.weight")]
    at = 16 + hlen + qkv["codes"]["offset"] + qkv["codes"]["length"] - 3
    flipped = bytearray(good)
    flipped[at] ^= 0x10
    with pytest.raises(ArtifactError, match="'blocks.0.attn.qkv.weight': rANS stream"):
        load_artifact(corrupt(tmp_path, resealed(flipped)))
    joint = header["joint"][0]
    flipped = bytearray(good)
    flipped[16 + hlen + joint["offset"] + joint["length"] - 3] ^= 0x10
    with pytest.raises(ArtifactError, match=r"joint rANS payload 0 \(tensors 'blocks.0.mlp.proj.weight', "
                                            r"'tok_emb.weight'\): rANS stream"):
        load_artifact(corrupt(tmp_path, resealed(flipped)))

    def with_header(mutate):
        h = json.loads(good[16:16 + hlen])
        mutate(h)
        hb = json.dumps(h, sort_keys=True, separators=(",", ":")).encode()
        return resealed(good[:12] + struct.pack("<I", len(hb)) + hb + good[16 + hlen:])

    def shape(h):
        h["tensors"][2]["shape"] = [5]

    def offset(h):
        h["tensors"][2]["data"]["offset"] = 10 ** 6

    def kind(h):
        h["tensors"][2]["kind"] = "fancy"

    def joint_index(h):
        h["tensors"][-1]["codes"]["joint"] = 1

    def joint_rows(h):
        h["tensors"][-1]["rows"], h["tensors"][-1]["shape"] = 4, [4, 128]

    def joint_bounds(h):
        h["joint"][0]["offset"] = 10 ** 6

    for mutate, message in [(shape, "has 16 bytes, 5 x torch.float32 needs 20"), (offset, "outside the"),
                            (kind, "unknown kind 'fancy'"),
                            (joint_index, "'tok_emb.weight': codes refer to joint payload 1 of 1"),
                            (joint_rows, "joint rANS payload 0 .*'tok_emb.weight'.* holds 640 values, its tensors need 768"),
                            (joint_bounds, "joint rANS payload 0 .*outside the")]:
        with pytest.raises(ArtifactError, match=message):
            load_artifact(corrupt(tmp_path, with_header(mutate)))


def test_expected_names_and_shapes(tmp_path):
    _, tensors, _ = golden_inputs()
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = dict(shapes, extra=(3,))
    with pytest.raises(ArtifactError, match="missing tensor.*'extra'"):
        load_artifact(GOLDEN, expected=missing)
    fewer = {k: v for k, v in shapes.items() if k != "step"}
    with pytest.raises(ArtifactError, match="unexpected tensor.*'step'"):
        load_artifact(GOLDEN, expected=fewer)
    wrong = dict(shapes, **{"blocks.0.attn.qkv.weight": (16, 12)})
    with pytest.raises(ArtifactError, match=r"'blocks.0.attn.qkv.weight' has shape \(12, 16\), expected \(16, 12\)"):
        load_artifact(GOLDEN, expected=wrong)


def index_of(data):
    """``(header length, JSON index)`` of a version 3-5 file."""
    hlen = struct.unpack_from("<I", data, 12)[0]
    method, blob = data[16], data[17:16 + hlen]
    return hlen, json.loads(unpack(blob, ("raw", "zstd", "lzma", "lzma2")[method]))


def unpack(blob, codec_name):
    """A payload through its codec, decoded here with the libraries themselves (not pgolf)."""
    import zlib
    if codec_name == "lzma2":
        return lzma.decompress(blob, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 22}])
    if codec_name == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().decompress(blob)
    return {"raw": lambda b: b, "lzma": lzma.decompress, "zlib": zlib.decompress}[codec_name](blob)


def test_v5_layout_index_side_stream_and_checksum():
    data = GOLDEN_V5.read_bytes()
    magic, version, _ = struct.unpack_from("<8sII", data)
    assert (magic, version) == (MAGIC, 5)
    assert data[16] == 3  # the index as raw LZMA2
    hlen, header = index_of(data)
    assert len(data) == 16 + hlen + header["payload_bytes"] + 32
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    side = header["side"]
    regions = sorted((e.get("scale", e.get("data"))["offset"], e.get("scale", e.get("data"))["length"])
                     for e in header["tensors"])
    assert all(e.get("scale", e.get("data"))["codec"] == "side" for e in header["tensors"])
    assert [o for o, _ in regions] == [sum(n for _, n in regions[:i]) for i in range(len(regions))]  # they tile it
    assert side["size"] == sum(n for _, n in regions) == sum(n for _, n in side["groups"])
    assert [k for k, _ in side["groups"]] == [2, 4, 8]  # fp16 scales and bf16, float32, int64


def test_read_index_of_every_version_and_of_what_is_not_an_artifact(tmp_path):
    assert [e["name"] for e in read_index(GOLDEN)["tensors"]] == list(golden_inputs(version=2)[1])  # raw JSON header
    for golden in (GOLDEN_V3_ZSTD, GOLDEN_V5):  # a zstd and a raw LZMA2 header
        assert read_index(golden) == index_of(golden.read_bytes())[1]
    (tmp_path / "x").write_bytes(b"hello")
    with pytest.raises(ArtifactError, match="not a pgolf artifact"):
        read_index(tmp_path / "x")
    (tmp_path / "t").write_bytes(GOLDEN_V5.read_bytes()[:20])
    with pytest.raises(ArtifactError, match="truncated"):
        read_index(tmp_path / "t")


def test_v5_side_stream_groups_are_byte_planes():
    """Decoded with lzma itself: regions of one item size are consecutive; a shuffled group is
    stored plane by plane as a whole; an entry's offset counts in the unshuffled stream."""
    config, tensors, meta = golden_inputs(version=5)
    data = GOLDEN_V5.read_bytes()
    hlen, header = index_of(data)
    side = header["side"]
    raw = unpack(data[16 + hlen + side["offset"]:16 + hlen + side["offset"] + side["length"]], side["codec"])
    plain, at = b"", 0
    for k, n in side["groups"]:
        group = raw[at:at + n]
        plain += np.frombuffer(group, np.uint8).reshape(k, -1).T.tobytes() if side["shuffle"] else group
        at += n
    for e in header["tensors"]:
        ref = e.get("scale", e.get("data"))
        t = tensors[e["name"]]
        want = (t.scale if isinstance(t, QTensor) else t).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert plain[ref["offset"]:ref["offset"] + ref["length"]] == want, e["name"]


def test_v5_context_codes_a_role_across_layers(tmp_path):
    """Near-duplicate rows (one role over four layers): v5 stores them context-coded, one payload,
    far below v2, exactly."""
    rng = np.random.default_rng(8)
    protos = rng.integers(-20, 21, (8, 64))
    tensors = {}
    for layer in range(4):
        codes = np.clip(protos[rng.integers(0, 8, 48)] + rng.integers(-1, 2, (48, 64)), -31, 31).astype(np.int8)
        tensors[f"blocks.{layer}.mlp.fc.weight"] = QTensor(
            codes=torch.from_numpy(codes), scale=torch.full((48,), 0.01, dtype=torch.float16), bits=6,
            shape=(48, 64), dtype=torch.float32)
    tensors["blocks.0.attn.c_q.weight"] = qtensor((32, 64), 6, 3)
    v2 = save_artifact(tmp_path / "v2.pgolf", config={}, tensors=tensors, version=2)
    v5 = save_artifact(tmp_path / "v5.pgolf", config={}, tensors=tensors)
    _, header = index_of((tmp_path / "v5.pgolf").read_bytes())
    refs = {e["name"]: e["codes"] for e in header["tensors"]}
    assert len({json.dumps(refs[f"blocks.{i}.mlp.fc.weight"]) for i in range(4)}) == 1
    assert refs["blocks.0.mlp.fc.weight"]["codec"] == "ctx"
    assert v5.total_bytes < 0.7 * v2.total_bytes
    assert sum(v5.tensor_bytes.values()) == header["payload_bytes"]
    # the codes' shares add up to the code streams exactly; the rest of the payloads is the side stream
    streams = sum(s["length"] for s in header["ctx"] + header["joint"])
    own = sum(e["codes"]["length"] for e in header["tensors"] if "length" in e["codes"])
    codes = codes_payload_bytes(read_index(tmp_path / "v5.pgolf"))
    assert read_index(tmp_path / "v5.pgolf") == header
    assert sum(codes.values()) == streams + own == header["payload_bytes"] - header["side"]["length"]
    fc = [f"blocks.{i}.mlp.fc.weight" for i in range(4)]
    assert sum(codes[n] for n in fc) == header["ctx"][refs[fc[0]]["ctx"]]["length"]
    art = load_artifact(tmp_path / "v5.pgolf", expected={k: tuple(v.shape) for k, v in tensors.items()})
    for name, t in tensors.items():
        assert_same(art.tensors[name], t)


@pytest.mark.parametrize("seed", range(6))
def test_v5_never_larger_than_v2(tmp_path, seed):
    """Random sets of tensors (widths, shapes, roles, float tensors, blocks whose matrices have
    column priors): v5 <= v2, byte for byte counted."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(int(rng.integers(1, 7))):
        bits = int(rng.choice([4, 5, 6, 8]))
        shape = (int(rng.integers(1, 40)), int(rng.choice([7, 64, 128])))
        tensors[f"blocks.{i % 3}.{rng.choice(['attn', 'mlp'])}.w"] = qtensor(shape, bits, seed * 10 + i)
    tensors["scalars"] = torch.from_numpy(rng.standard_normal(int(rng.integers(1, 50))).astype(np.float32))
    if seed % 2:
        tensors.update(prior_block(seed, layers=range(int(rng.integers(1, 4)))))
    for codec in ("rans", "zstd"):
        v2 = save_artifact(tmp_path / "v2.pgolf", config={"seed": seed}, tensors=tensors, codec=codec, version=2)
        v5 = save_artifact(tmp_path / "v5.pgolf", config={"seed": seed}, tensors=tensors, codec=codec)
        assert v5.total_bytes <= v2.total_bytes, (codec, v5.total_bytes, v2.total_bytes)
        art = load_artifact(tmp_path / "v5.pgolf")
        for name, t in tensors.items():
            assert_same(art.tensors[name], t)


def reindexed(good, mutate):
    """A version 3-5 file with its JSON index changed by ``mutate``, stored raw, checksum resealed."""
    hlen, header = index_of(good)
    mutate(header)
    hb = b"\0" + json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return resealed(good[:12] + struct.pack("<I", len(hb)) + hb + good[16 + hlen:])


def test_v3_corruption_behind_a_valid_checksum_is_named(tmp_path):
    good = GOLDEN_V3.read_bytes()

    def with_header(mutate):
        return reindexed(good, mutate)

    def side_size(h):
        h["side"]["size"] += 1

    def side_bounds(h):
        h["side"]["offset"] = 10 ** 6

    def scale_region(h):
        h["tensors"][0]["scale"]["offset"] = h["side"]["size"]

    def odd_region(h):
        h["tensors"][0]["scale"]["length"] = 3

    def no_side(h):
        del h["side"]

    for mutate, message in [(side_size, "side stream: .* header says"), (side_bounds, "side stream payload"),
                            (scale_region, "scale in the side stream payload"),
                            (odd_region, "not whole 2-byte items"), (no_side, "header field 'side' missing")]:
        with pytest.raises(ArtifactError, match=message):
            load_artifact(corrupt(tmp_path, with_header(mutate)))
    bad_method = resealed(good[:16] + b"\x07" + good[17:])
    with pytest.raises(ArtifactError, match="header is not a valid artifact header"):
        load_artifact(corrupt(tmp_path, bad_method))


def test_corrupt_context_payload_is_named(tmp_path):
    tensors = {f"blocks.{i}.mlp.fc.weight": qtensor((24, 64), 6, 50 + i) for i in range(3)}
    rng = np.random.default_rng(9)
    protos = rng.integers(-20, 21, (4, 64))
    for name in tensors:
        tensors[name].codes.copy_(torch.from_numpy(protos[rng.integers(0, 4, 24)].astype(np.int8)))
    save_artifact(tmp_path / "m.pgolf", config={}, tensors=tensors)
    good = (tmp_path / "m.pgolf").read_bytes()
    hlen, header = index_of(good)
    assert len(header["ctx"]) == 1
    ref = header["ctx"][0]
    cut = bytearray(good)
    del cut[16 + hlen + ref["offset"] + ref["length"] - 2]  # one payload byte short ...
    cut[16 + hlen + header["side"]["offset"] - 1:16 + hlen + header["side"]["offset"] - 1] = b""
    hb = json.loads(json.dumps(header))
    hb["ctx"][0]["length"] -= 1
    hb["side"]["offset"] -= 1
    hb["payload_bytes"] -= 1
    for e in hb["tensors"]:
        if e["codes"].get("offset", 0) > ref["offset"]:
            e["codes"]["offset"] -= 1
    blob = b"\0" + json.dumps(hb, sort_keys=True, separators=(",", ":")).encode()
    data = resealed(good[:12] + struct.pack("<I", len(blob)) + blob + bytes(cut[16 + hlen:]))
    with pytest.raises(ArtifactError, match=r"context-coded payload 0 \(tensors 'blocks.0.mlp.fc.weight'.*\): "
                                            r"context-coded stream"):
        load_artifact(corrupt(tmp_path, data))


def test_v5_side_and_prior_corruption_behind_a_valid_checksum_is_named(tmp_path):
    good = GOLDEN_V5.read_bytes()

    def with_header(mutate):
        return reindexed(good, mutate)

    def entry(h, name):
        return next(e for e in h["tensors"] if e["name"] == name)

    def groups_short(h):
        h["side"]["groups"][0][1] += 1

    def groups_odd(h):
        h["side"]["groups"] = [[4, 2], [2, h["side"]["size"] - 2]]

    def no_groups(h):
        del h["side"]["groups"]

    def prior_unknown(h):
        entry(h, "blocks.1.mlp.proj.weight")["codes"]["prior"] = "blocks.9.mlp.fc.weight"

    def prior_raw(h):
        entry(h, "blocks.1.mlp.proj.weight")["codes"]["prior"] = "skip_weights"

    def prior_rows(h):
        entry(h, "blocks.1.mlp.proj.weight")["codes"]["prior"] = "tok_emb.weight"

    def prior_missing(h):
        del entry(h, "blocks.1.mlp.proj.weight")["codes"]["prior"]

    def moved(h):  # a tensor listed with another context-coded payload
        entry(h, "blocks.1.mlp.proj.weight")["codes"]["ctx"] = entry(h, "blocks.0.attn.qkv.weight")["codes"]["ctx"]

    proj = r"context-coded payload \d \(tensors 'blocks.0.mlp.proj.weight', 'blocks.1.mlp.proj.weight'\): "
    for mutate, message in [
            (groups_short, r"side stream: groups .* are not \[item size, bytes\] pairs covering its"),
            (groups_odd, "are not .item size, bytes. pairs"), (no_groups, "header field 'groups' missing"),
            (prior_unknown, proj + "tensor 'blocks.1.mlp.proj.weight' names the prior 'blocks.9.mlp.fc.weight', "
                                   "not a quantised tensor of this file"),
            (prior_raw, proj + "tensor .* names the prior 'skip_weights', not a quantised tensor"),
            (prior_rows, proj + "prior 'tok_emb.weight' has 3 rows, tensor 'blocks.1.mlp.proj.weight' has 256 columns"),
            (prior_missing, proj + "context-coded stream matrix 1 was coded with a column prior and none was given"),
            (moved, r"context-coded payload 0 \(tensors 'blocks.0.attn.qkv.weight', 'blocks.1.mlp.proj.weight'\): "
                    r"holds matrices \[\(12, 16\)\], its tensors need \[\(12, 16\), \(8, 256\)\]")]:
        with pytest.raises(ArtifactError, match=message):
            load_artifact(corrupt(tmp_path, with_header(mutate)))


def test_lqer_factors_need_version_4_or_5(tmp_path):
    config, tensors, meta = golden_inputs(version=4)
    assert struct.unpack_from("<I", GOLDEN_V4.read_bytes(), 8)[0] == 4
    with pytest.raises(ValueError, match=r"version 2 cannot hold LQER factors "
                                         r"\(blocks.0.mlp.proj.weight.lqer_a, blocks.0.mlp.proj.weight.lqer_b\); "
                                         r"write version 5"):
        save_artifact(tmp_path / "a.pgolf", config=config, tensors=tensors, meta=meta, version=2)
    with pytest.raises(ValueError, match="version must be one of 2, 5, got 4"):
        save_artifact(tmp_path / "a.pgolf", config=config, tensors=tensors, meta=meta, version=4)
    assert not (tmp_path / "a.pgolf").exists()
    for golden in (GOLDEN_V4, GOLDEN_V5):
        art = load_artifact(golden)
        assert art.tensors["blocks.0.mlp.proj.weight.lqer_a"].codes.min() == -2  # the asymmetric int2 grid survives
