"""Whole-artifact comparison on identical codes: pgolf's artifact (the current format, v5, and v2)
against the records' serialisation pipelines (RECORD_STACK.md C.6), written from their description.

    python -m benchmarks.codec_artifacts --checkpoint runs/demo/checkpoint.pt [--checkpoint ...]
        [--synthetic baseline,record] [--speed] [--out benchmarks/results] [--report codec.artifacts.md]

Every case is a state dict quantised exactly as pgolf exports it (pgolf.quant.rtn.quantize_state_dict
with the record-like policy below), then stored by each contender:

* pgolf-v5 / pgolf-v2: pgolf.artifact.save_artifact, the whole file (index, payloads, SHA-256);
* bytes+brotli-11: every tensor's bytes (int8 codes one byte per value, fp16 scales, float
  tensors) concatenated, brotli quality 11 (the records' default serialiser, without pickle);
* shuffle+brotli-11: the same bytes, byte-shuffled with stride 2, then brotli-11 (PR #1530);
* pergroup-lrzip: the 1.0611 record's pipeline: int8 tensors grouped by role across layers
  (tok_emb, c_k, c_q, c_v, attn proj, mlp fc, mlp proj), rows of tok_emb / c_q / mlp.fc in greedy
  L1 nearest-neighbour order (permutations as uint16 through brotli-11), matrices written
  column-major, each group through ``lrzip -z -L 9`` (ZPAQ); everything else through brotli-11;
  plus the 44-byte container (magic, stream count, 9 lengths). Reported "unavailable" when no
  ``lrzip`` binary is on PATH.

Floors: order-0 entropy of the codes per tensor and per row group of pgolf's rANS streams (codes
only, no tables), and given each column's RMS class (:func:`column_class_bits`). The reach column,
``v5 at block floor / lrzip``, is pgolf-v5 with its block matrices' codes (every matrix but the
embedding) replaced by their col-class floor at 64 classes, class maps and tables free: what a
coder that models per-column variance perfectly would store. Where it is above -2 %, the goal needs
structure in the block matrices beyond their columns' variance. Whether the trained weights have any
is measured on their column-shuffled twin (:func:`column_shuffled`: each block matrix's columns keep
their codes, in a random order of rows): what a contender stores less on the trained weights than on
the twin is structure beyond the columns' statistics that it found. ``--speed`` also times the decode
of a record-sized artifact on one CPU core (:mod:`benchmarks.bench_codec_decode` through the
shared harness).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
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
from pgolf.artifact.format import VERSION, role, save_artifact
from pgolf.artifact.index import codes_payload_bytes, read_index
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
    for v in (VERSION, 2):
        t = time.perf_counter()
        info = save_artifact(tmp / f"v{v}.pgolf", config={}, tensors=entries, version=v)
        out[f"pgolf-v{v} encode s"] = time.perf_counter() - t
        out[f"pgolf-v{v}"] = info.total_bytes
        if v == VERSION:
            out[f"pgolf-v{v} at block floor"] = at_block_floor(entries, info.path)
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
    out["floor/col-class (codes only)"] = math.ceil(column_class_bits(entries) / 8)
    return out


def at_block_floor(entries: dict, path: Path) -> int:
    """The bytes of the artifact at ``path`` (holding ``entries``) with the codes of its block
    matrices (every QTensor but the embedding) replaced by their col-class floor at 64 classes
    (class maps and tables free): what it would take with perfect per-column variance modelling
    of those matrices."""
    blocks = {n: t for n, t in entries.items() if is_block_matrix(n, t)}
    floor = math.ceil(column_class_bits(blocks, classes=64) / 8)
    codes = codes_payload_bytes(read_index(path))
    return os.path.getsize(path) - sum(codes[n] for n in blocks) + floor


def is_block_matrix(name: str, t) -> bool:
    """A quantised matrix of the blocks: every QTensor but the embedding."""
    return isinstance(t, QTensor) and not name.startswith("tok_emb")


def column_shuffled(entries: dict, seed: int = 0) -> dict:
    """The column-shuffled twin of ``entries``: in every block matrix each column's codes are put in
    an independent random order of rows; everything else is kept. Each column keeps its histogram,
    so the floors and the reach are unchanged, but no code is tied to its row or to the other
    columns any more: row similarity, cross-column dependence and row-scale structure are gone.
    A coder that stores the trained weights in fewer bytes than their twin found that much
    structure beyond the columns' statistics."""
    rng = np.random.default_rng(seed)
    out = dict(entries)
    for name, t in entries.items():
        if is_block_matrix(name, t):
            codes = t.codes.numpy()
            rows = rng.random(codes.shape).argsort(axis=0)
            out[name] = dataclasses.replace(t, codes=torch.from_numpy(np.take_along_axis(codes, rows, axis=0)))
    return out


def column_class_bits(entries: dict, classes: int = 16) -> float:
    """Order-0 entropy of the codes given their column's class: each tensor's columns cut into
    ``classes`` quantile classes of their RMS, one histogram per (role, bit width, class) pooled
    across layers. The structure a per-column variance model can use; the class maps and tables
    are not counted, so it is an optimistic floor."""
    hist: dict[tuple, np.ndarray] = {}
    for name, t in entries.items():
        if not isinstance(t, QTensor) or not t.codes.numel():
            continue
        codes = t.codes.numpy().astype(np.int64) + 128
        rms = np.sqrt(((codes - 128).astype(np.float64) ** 2).mean(0))
        cls = np.searchsorted(np.quantile(rms, np.linspace(0, 1, classes + 1)[1:-1]), rms)
        for k in np.unique(cls):
            key = (role(name), t.bits, int(k))
            hist[key] = hist.get(key, 0) + np.bincount(codes[:, cls == k].ravel(), minlength=256)
    total = 0.0
    for c in hist.values():
        c = c[c > 0]
        total += float(-(c * np.log2(c / c.sum())).sum())
    return total


def checkpoint_entries(path: str) -> dict:
    """A pgolf checkpoint's model, quantised with the roles of the model its config describes."""
    ck = load_checkpoint(path)
    roles = parameter_roles(GPT(ModelConfig(**ck["config"]["model"])))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()}
    return quantize_state_dict(sd, QCFG, roles, impl="torch")


SYNTHETIC = {"baseline": (9, 1024, 512, 1024), "record": (11, 8192, 512, 2048), "tiny": (2, 128, 64, 128)}


def synthetic_entries(kind: str, seed: int = 11) -> dict:
    """Student-t weights of the baseline (9 x 512, vocab 1024), record (11 x 512, vocab 8192, MLP 4x)
    or tiny (2 x 64, vocab 128) shapes (:data:`SYNTHETIC`: layers, vocab, width, MLP width)."""
    if kind not in SYNTHETIC:
        raise ValueError(f"synthetic set must be one of {', '.join(SYNTHETIC)}, got {kind!r}")
    rng = np.random.default_rng(seed)
    layers, vocab, dim, mlp = SYNTHETIC[kind]
    shapes = {"tok_emb.weight": (vocab, dim)}
    for i in range(layers):
        shapes.update({f"blocks.{i}.attn.c_q.weight": (dim, dim), f"blocks.{i}.attn.c_k.weight": (dim // 2, dim),
                       f"blocks.{i}.attn.c_v.weight": (dim // 2, dim), f"blocks.{i}.attn.proj.weight": (dim, dim),
                       f"blocks.{i}.mlp.fc.weight": (mlp, dim), f"blocks.{i}.mlp.proj.weight": (dim, mlp)})
    sd = {k: torch.from_numpy(weights(rng, s, "t", 4.0)) for k, s in shapes.items()}
    roles = {k: EMBED if k.startswith("tok_emb") else MATRIX for k in sd}
    return quantize_state_dict(sd, QCFG, roles, impl="torch")


def twin_row(name: str, entries: dict, trained: dict, tmp: Path) -> str:
    """One Markdown row of the twin table: pgolf's current format and pergroup-lrzip on the trained
    weights (``trained``: their :func:`contenders` sizes) and on their :func:`column_shuffled` twin."""
    twin = column_shuffled(entries)
    cur = f"pgolf-v{VERSION}"
    sizes = {cur: save_artifact(tmp / "twin.pgolf", config={}, tensors=twin).total_bytes,
             "pergroup-lrzip": pergroup(twin) if trained["pergroup-lrzip"] is not None else None}
    cells = []
    for k, size in sizes.items():
        if size is None:
            cells += ["unavailable"] * 3
            continue
        gain = size - trained[k]
        cells += [f"{trained[k]:,}", f"{size:,}", f"{gain:,} ({gain / size:.2%})"]
    lrz, lrz_twin = trained["pergroup-lrzip"], sizes["pergroup-lrzip"]
    lead = "unavailable" if lrz is None else f"{trained[cur] / lrz - 1:+.2%} / {sizes[cur] / lrz_twin - 1:+.2%}"
    return f"| {name} | " + " | ".join(cells) + f" | {lead} |"


def twin_table(rows: list[str]) -> list[str]:
    """The twin table's Markdown lines around ``rows`` (none without rows)."""
    if not rows:
        return []
    cur = f"pgolf-v{VERSION}"
    text = ("Structure beyond the columns: each contender on the trained weights and on their column-shuffled "
            "twin (column_shuffled: every block matrix's columns keep their codes, in a random order of rows; the "
            "embedding, scales and float tensors as they are). The gain is what the twin costs more: structure "
            "beyond the columns' statistics that the contender found.")
    head = (f"| case | {cur} | {cur} on twin | {cur} gain | pergroup-lrzip | pergroup-lrzip on twin | "
            f"pergroup-lrzip gain | v{VERSION} / lrzip, trained / twin |")
    return ["", text, "", head, "|---|" + "---:|" * 7, *rows]


def decode_speed(out: Path) -> list[str]:
    """The full case of :mod:`benchmarks.bench_codec_decode` (a record-sized artifact) through the
    shared harness on one CPU core: rows appended to ``<out>/codec_decode.jsonl``; Markdown lines.
    The harness times wall-clock seconds, which a shared machine inflates; each contender is then
    run three more times and timed in CPU seconds of the calling thread (the decoders run in it,
    single-threaded): the least of them against the goal (a neighbour on a shared host only ever
    adds time), all three reported with the load average."""
    from benchmarks import bench_codec_decode
    from benchmarks.harness import OK, Timing, as_dicts, run_benchmark, write_results
    torch.set_num_threads(1)
    bench = bench_codec_decode.BENCHMARK
    timing = Timing(warmup_ms=0, rep_ms=0, min_reps=3, max_reps=3, max_rotate=1, rotate_bytes=0, flush_bytes=0)
    rows = run_benchmark(bench, size="full", device="cpu", timing=timing, rotate=1,
                         log=lambda line: print(line, flush=True))
    write_results(as_dicts(rows), out)
    (case,) = bench.cases("full")
    (inputs,) = case.make_inputs(torch.device("cpu"), 0)
    values = sum(c.size for c in inputs.codes.values())
    lines = ["", f"Decode of the record-sized synthetic set ({values:,} values, artifact {inputs.artifact_bytes:,} "
             "bytes) on one CPU core (`benchmarks/bench_codec_decode.py` through the shared harness, median of 3 "
             "after a warm-up, wall-clock; rows in `codec_decode.jsonl`), then three more calls timed in CPU "
             "seconds of the calling thread (the least against the goal):", ""]
    for r, contender in zip(rows, bench.contenders):
        load = os.getloadavg()[0]
        cpu = []
        for _ in range(3):
            t0 = time.thread_time()
            contender.fn(inputs)
            cpu.append(time.thread_time() - t0)
        wall = (f"{r.time_ms / 1e3:.2f} s wall (p20-p80 {r.p20_ms / 1e3:.2f}-{r.p80_ms / 1e3:.2f})"
                if r.status == OK else f"{r.status} {r.message}")
        lines.append(f"- {contender.name}: {wall}; {min(cpu):.2f} CPU s (calls: "
                     f"{', '.join(f'{c:.2f}' for c in cpu)}) at load average {load:.1f} "
                     f"(goal < 5 s: {'PASS' if min(cpu) < 5 else 'FAIL'})")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", default=[], help="a trained pgolf checkpoint (repeatable)")
    p.add_argument("--synthetic", default="", help="comma list of synthetic sets: baseline, record, tiny")
    p.add_argument("--speed", action="store_true",
                   help="time the decode of a record-sized artifact on one core (benchmarks/bench_codec_decode.py)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--report", default="codec.artifacts.md", help="the Markdown file written under --out")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    cases = {Path(c).parent.name: (lambda c=c: checkpoint_entries(c)) for c in args.checkpoint}
    cases.update({f"synthetic-{k}": (lambda k=k: synthetic_entries(k)) for k in args.synthetic.split(",") if k})
    lines = ["# Whole-artifact comparison", "", f"`python -m benchmarks.codec_artifacts {' '.join(argv)}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()) +
             f", lrzip {'on PATH' if shutil.which('lrzip') else 'unavailable'}.", ""]
    cur = f"pgolf-v{VERSION}"
    if cases:
        lines += ["Bytes of each contender on identical codes (policy: int7 tok_emb, int6 otherwise, 12.85-sigma "
                  "clip, float tensors <= 4096 values kept float32). Floors: codes only, no tables or side information "
                  "(floor/col-class: entropy given each column's RMS class, see column_class_bits). The reach column: "
                  f"{cur} with the codes of every matrix but the embedding at their col-class floor (64 classes, maps and "
                  f"tables free), against pergroup-lrzip. Goal: {cur} smaller "
                  "than every other contender, and on the trained models (the checkpoints) at least 2.00 % below "
                  "pergroup-lrzip.", "",
                  f"| case | values | {cur} | pgolf-v2 | bytes+brotli-11 | shuffle+brotli-11 | pergroup-lrzip | "
                  f"floor/tensor | floor/row-group | floor/col-class | v{VERSION} / best other | v{VERSION} / lrzip | "
                  f"v{VERSION} at block floor / lrzip | v{VERSION} encode s | goal |",
                  "|---|" + "---:|" * 13 + "---|"]
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / args.report
    twins: list[str] = []  # rows of the twin table, trained cases only
    with tempfile.TemporaryDirectory() as d:
        for name, make in cases.items():
            entries = make()
            n = sum(t.codes.numel() for t in entries.values() if isinstance(t, QTensor))
            r = contenders(entries, Path(d))
            others = [r[k] for k in ("pgolf-v2", "bytes+brotli-11", "shuffle+brotli-11", "pergroup-lrzip") if r[k]]
            fmt = lambda v: "unavailable" if v is None else f"{v:,}"  # noqa: E731
            lrz = r["pergroup-lrzip"]
            vs_lrzip = "unavailable" if lrz is None else f"{r[cur] / lrz - 1:+.2%}"
            reach = "unavailable" if lrz is None else f"{r[cur + ' at block floor'] / lrz - 1:+.2%}"
            trained = not name.startswith("synthetic-")
            goal = "n/a (no lrzip)" if lrz is None else (
                "PASS" if r[cur] < min(others) and (r[cur] <= 0.98 * lrz or not trained) else "FAIL")
            row = (f"| {name} | {n:,} | {fmt(r[cur])} | {fmt(r['pgolf-v2'])} | {fmt(r['bytes+brotli-11'])} | "
                   f"{fmt(r['shuffle+brotli-11'])} | {fmt(lrz)} | {fmt(r['floor/tensor (codes only)'])} | "
                   f"{fmt(r['floor/row-group (codes only)'])} | {fmt(r['floor/col-class (codes only)'])} | "
                   f"{r[cur] / min(others):.4f} | {vs_lrzip} | {reach} | {r[cur + ' encode s']:.1f} | {goal} |")
            print(row, flush=True)
            lines.append(row)
            if trained:
                twins.append(twin_row(name, entries, r, Path(d)))
                print(twins[-1], flush=True)
            report.write_text("\n".join(lines + twin_table(twins)) + "\n")  # each case kept once measured
    lines += twin_table(twins)
    if args.speed:
        lines += decode_speed(args.out)
    report.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
