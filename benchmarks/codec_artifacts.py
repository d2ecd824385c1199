"""Whole-artifact comparison on identical codes: pgolf's artifact (format v3 and v2) against the
records' serialisation pipelines (RECORD_STACK.md C.6), written from their description.

    python -m benchmarks.codec_artifacts --checkpoint runs/demo/checkpoint.pt [--checkpoint ...]
        [--synthetic baseline,record] [--speed] [--out benchmarks/results]

Every case is a state dict quantised exactly as pgolf exports it (pgolf.quant.rtn.quantize_state_dict
with the record-like policy below), then stored by each contender:

* pgolf-v3 / pgolf-v2: pgolf.artifact.save_artifact, the whole file (index, payloads, SHA-256);
* bytes+brotli-11: every tensor's bytes (int8 codes one byte per value, fp16 scales, float
  tensors) concatenated, brotli quality 11 (the records' default serialiser, without pickle);
* shuffle+brotli-11: the same bytes, byte-shuffled with stride 2, then brotli-11 (PR #1530);
* pergroup-lrzip: the 1.0611 record's pipeline: int8 tensors grouped by role across layers
  (tok_emb, c_k, c_q, c_v, attn proj, mlp fc, mlp proj), rows of tok_emb / c_q / mlp.fc in greedy
  L1 nearest-neighbour order (permutations as uint16 through brotli-11), matrices written
  column-major, each group through ``lrzip -z -L 9`` (ZPAQ); everything else through brotli-11;
  plus the 40-byte container. Reported "unavailable" when no ``lrzip`` binary is on PATH.

Floors: order-0 entropy of the codes per tensor and per row group of pgolf's rANS streams (codes
only, no tables). Also times the context coder on a record-sized set of codes (one core).
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.codec_sizes import RESULTS, entropy_bits, machine, weights
from pgolf import codec
from pgolf.artifact.format import save_artifact
from pgolf.config import ModelConfig, QuantConfig
from pgolf.model.gpt import GPT
from pgolf.model.roles import EMBED, MATRIX, parameter_roles
from pgolf.quant.qtensor import QTensor
from pgolf.quant.rtn import quantize_state_dict
from pgolf.train.checkpoint import load_checkpoint

# Record-like export policy (RECORD_STACK.md C.3): int7 embedding, int6 matrices, k-sigma clip.
QCFG = QuantConfig(bits=6, policy="tok_emb=7", scale_rule="sigma", clip_sigma=12.85, keep_float_max_numel=4096)
GROUPS = ("tok_emb", "c_k", "c_q", "c_v", "attn.proj", "mlp.fc", "mlp.proj")
SORTED = ("tok_emb", "c_q", "mlp.fc")


def nn_order(codes: np.ndarray) -> np.ndarray:
    """Greedy L1 nearest-neighbour row order from row 0 (the record's similarity sort)."""
    x = codes.astype(np.int16)
    left = np.ones(len(x), bool)
    order, cur = [0], 0
    left[0] = False
    for _ in range(len(x) - 1):
        d = np.abs(x - x[cur]).sum(1)
        d[~left] = np.iinfo(np.int64).max
        cur = int(d.argmin())
        order.append(cur)
        left[cur] = False
    return np.array(order)


def brotli11(data: bytes) -> bytes:
    import brotli
    return brotli.compress(data, quality=11, lgwin=24)


def lrzip(data: bytes) -> bytes | None:
    exe = shutil.which("lrzip")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "g.bin"
        src.write_bytes(data)
        subprocess.run([exe, "-z", "-L", "9", "-q", "-f", "-o", str(src) + ".lrz", str(src)], check=True,
                       capture_output=True)
        return (Path(d) / "g.bin.lrz").read_bytes()


def all_bytes(entries: dict) -> bytes:
    out = []
    for t in entries.values():
        if isinstance(t, QTensor):
            out += [t.codes.numpy().tobytes(), t.scale.numpy().tobytes()]
        else:
            out.append(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return b"".join(out)


def pergroup(entries: dict) -> int | None:
    groups = {g: [] for g in GROUPS}
    rest, perms = [], []
    for name, t in entries.items():
        g = next((g for g in GROUPS if g in name), None) if isinstance(t, QTensor) else None
        if g is None:
            rest.append(t)
            continue
        codes = t.codes.numpy()
        if g in SORTED:
            order = nn_order(codes)
            perms.append(order.astype(np.uint16).tobytes())
            codes = codes[order]
        groups[g].append(np.ascontiguousarray(codes.T).tobytes())
        rest.append(t.scale)
    sizes = []
    for g, parts in groups.items():
        if parts:
            z = lrzip(b"".join(parts))
            if z is None:
                return None
            sizes.append(len(z))
    rest_bytes = b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in rest)
    return sum(sizes) + len(brotli11(rest_bytes)) + len(brotli11(b"".join(perms))) + 4 + 4 + 4 * 9


def contenders(entries: dict, tmp: Path) -> dict[str, int | None]:
    raw = all_bytes(entries)
    shuffled = np.frombuffer(raw[:len(raw) // 2 * 2], np.uint8).reshape(-1, 2).T.tobytes() + raw[len(raw) // 2 * 2:]
    out = {}
    for v in (3, 2):
        t = time.perf_counter()
        out[f"pgolf-v{v}"] = save_artifact(tmp / f"v{v}.pgolf", config={}, tensors=entries, version=v).total_bytes
        out[f"pgolf-v{v} encode s"] = time.perf_counter() - t
    out["bytes+brotli-11"] = len(brotli11(raw))
    out["shuffle+brotli-11"] = len(brotli11(shuffled))
    out["pergroup-lrzip"] = pergroup(entries)
    qs = [t for t in entries.values() if isinstance(t, QTensor)]
    out["floor/tensor (codes only)"] = math.ceil(sum(entropy_bits(q.codes.numpy()) for q in qs) / 8)
    group = 0.0
    for q in qs:
        info = codec.rans_info(codec.rans_encode(q.codes, q.bits, scales=q.scale))
        group += entropy_bits(q.codes.numpy(), info["row_groups"])
    out["floor/row-group (codes only)"] = math.ceil(group / 8)
    return out


def checkpoint_entries(path: str) -> dict:
    """A pgolf checkpoint's model, quantised with the roles of the model its config describes."""
    ck = load_checkpoint(path)
    roles = parameter_roles(GPT(ModelConfig(**ck["config"]["model"])))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()}
    return quantize_state_dict(sd, QCFG, roles, impl="torch")


def synthetic_entries(kind: str) -> dict:
    """Student-t weights of the baseline (9 x 512, vocab 1024) or record (11 x 512, vocab 8192, MLP 4x) shapes."""
    rng = np.random.default_rng(11)
    layers, vocab, mlp = (9, 1024, 1024) if kind == "baseline" else (11, 8192, 2048)
    shapes = {"tok_emb.weight": (vocab, 512)}
    for i in range(layers):
        shapes.update({f"blocks.{i}.attn.c_q.weight": (512, 512), f"blocks.{i}.attn.c_k.weight": (256, 512),
                       f"blocks.{i}.attn.c_v.weight": (256, 512), f"blocks.{i}.attn.proj.weight": (512, 512),
                       f"blocks.{i}.mlp.fc.weight": (mlp, 512), f"blocks.{i}.mlp.proj.weight": (512, mlp)})
    sd = {k: torch.from_numpy(weights(rng, s, "t", 4.0)) for k, s in shapes.items()}
    roles = {k: EMBED if k.startswith("tok_emb") else MATRIX for k in sd}
    return quantize_state_dict(sd, QCFG, roles, impl="torch")


def ctx_speed(entries: dict) -> dict:
    by_bits: dict[int, list] = {}
    for t in entries.values():
        if isinstance(t, QTensor):
            by_bits.setdefault(t.bits, []).append(t.codes.numpy())
    n = sum(c.size for cs in by_bits.values() for c in cs)
    t0 = time.process_time()
    streams = {b: codec.ctx_encode(cs, b) for b, cs in by_bits.items()}
    enc = time.process_time() - t0
    t0 = time.process_time()
    for s in streams.values():
        codec.ctx_decode(s)
    dec = time.process_time() - t0
    return {"values": n, "encode_cpu_s": enc, "decode_cpu_s": dec, "bytes": sum(map(len, streams.values()))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", default=[], help="a trained pgolf checkpoint (repeatable)")
    p.add_argument("--synthetic", default="", help="comma list of synthetic sets: baseline, record")
    p.add_argument("--speed", action="store_true", help="time ctx_encode/ctx_decode on the record-shaped set")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    cases = {Path(c).parent.name: (lambda c=c: checkpoint_entries(c)) for c in args.checkpoint}
    cases.update({f"synthetic-{k}": (lambda k=k: synthetic_entries(k)) for k in args.synthetic.split(",") if k})
    lines = ["# Whole-artifact comparison", "", f"`python -m benchmarks.codec_artifacts {' '.join(argv)}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()) +
             f", lrzip {'on PATH' if shutil.which('lrzip') else 'unavailable'}.", "",
             "Bytes of each contender on identical codes (policy: int7 tok_emb, int6 otherwise, 12.85-sigma "
             "clip, float tensors <= 4096 values kept float32). pgolf-v3 vs the best other in the last column.", "",
             "| case | values | pgolf-v3 | pgolf-v2 | bytes+brotli-11 | shuffle+brotli-11 | pergroup-lrzip | "
             "floor/tensor | floor/row-group | v3 / best other | v3 encode s |", "|---|" + "---:|" * 10]
    with tempfile.TemporaryDirectory() as d:
        for name, make in cases.items():
            entries = make()
            n = sum(t.codes.numel() for t in entries.values() if isinstance(t, QTensor))
            r = contenders(entries, Path(d))
            others = [r[k] for k in ("pgolf-v2", "bytes+brotli-11", "shuffle+brotli-11", "pergroup-lrzip") if r[k]]
            fmt = lambda v: "unavailable" if v is None else f"{v:,}"  # noqa: E731
            row = (f"| {name} | {n:,} | {fmt(r['pgolf-v3'])} | {fmt(r['pgolf-v2'])} | {fmt(r['bytes+brotli-11'])} | "
                   f"{fmt(r['shuffle+brotli-11'])} | {fmt(r['pergroup-lrzip'])} | {fmt(r['floor/tensor (codes only)'])} | "
                   f"{fmt(r['floor/row-group (codes only)'])} | {r['pgolf-v3'] / min(others):.4f} | "
                   f"{r['pgolf-v3 encode s']:.1f} |")
            print(row, flush=True)
            lines.append(row)
            if args.speed and name == "synthetic-record":
                sp = ctx_speed(entries)
                lines += ["", f"Context coder on {sp['values']:,} values of {name} (one thread, CPU seconds of this "
                          f"process): encode {sp['encode_cpu_s']:.1f} s, decode {sp['decode_cpu_s']:.1f} s, "
                          f"{sp['bytes']:,} bytes.", ""]
                print(lines[-2], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "codec.artifacts.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
