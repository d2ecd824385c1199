"""Projected whole-eval time of per-document LoRA TTT on N ranks, from a per-step cost model.

Documents: the FineWeb validation set's length-sorted batches of 64 (by default
``../shared/data/fineweb_val/doc_length_batches.tsv`` beside the checkout, as issue 14 names it: the
shortest and longest document of 213 of the 782 batches, from the record's public logs; the others
interpolated linearly in the batch index, and a batch's 64 lengths spread evenly between its two
ends), or, with ``--val-shard``, a real validation shard's documents by their BOS positions (split as
the ``doc`` geometry splits them, sorted by length, batches of 64 from the shortest, the remainder
the longest batch, as the record's 50,000 = 781 x 64 + 16). A batch of ``D`` documents with longest ``P`` takes ``ceil(P / C)`` steps; step ``j`` runs
forward + backward + the optimizer over ``D x w_j`` tokens, ``w_j = min((j + 1) C, W)`` (the record
pads every row to ``w_j``), so

    t_batch = sum_j (t_step + t_token * D * w_j)

Batches go longest first to the least loaded rank (the record's queue and pgolf's schedule both
approximate this); the eval time is the largest rank total, and the *critical path* is the
longest batch alone (no rank can finish before it).

Inputs, and which are measured: ``t_token`` comes from a ``bench_lora_ttt`` results file of the
shared harness (``--bench <out>/lora_ttt.jsonl``): for every ``ok`` row of its latest run (or
``--run-id``), ``t_token = scale * time / (D T)`` with ``D``, ``T`` from the case name -- measured, on
the machine the row names. What that bench times is one layer's five adapters plus the head (see its
docstring), not the whole model's step, so ``--scale`` (assumed, default 1: the benchmarked op
alone) stands for the rest. ``t_step`` (per-step latency) is assumed (``--step-ms``, default 0).
``--token-us`` replaces the file with an assumed ``t_token``. The output names each input as
measured or assumed; a CPU row gives CPU figures, and says that GPU per-step times are not measured.

    python -m benchmarks.ttt_projection --bench benchmarks/results/lora_ttt.jsonl [--step-ms 5] [--ranks 8]
    python -m benchmarks.ttt_projection --token-us 0.02 --step-ms 5 [--tsv PATH | --val-shard fineweb_val_000000.bin]
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.harness import latest_run, read_results
from pgolf.data.shards import load_tokens
from pgolf.eval.geometry import document_starts

BATCHES, DOCS, LAST_BATCH_DOCS, PREDICTIONS = 782, 50_000, 16, 47_851_520  # PREDICTIONS: RECORD_STACK.md A.2.1


def read_batches(path: str) -> np.ndarray:
    """``[782, 2]`` (shortest, longest) document length of every batch, interpolated where the file has none."""
    with open(path) as f:
        rows = [line.split("\t") for line in f if line.strip() and not line.startswith(("#", "batch"))]
    k = np.array([int(r[0]) for r in rows])
    lo, hi = np.array([float(r[1]) for r in rows]), np.array([float(r[2]) for r in rows])
    every = np.arange(1, BATCHES + 1)
    return np.stack([np.interp(every, k, lo), np.interp(every, k, hi)], 1)


def batches_from_shard(path: str, *, bos_id: int = 1, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(bounds, docs)`` of a real validation shard: ``bounds[i]`` the (shortest, longest) prediction count
    of batch ``i``, ``docs[i]`` its documents. A document is the span from a BOS to the next one (its
    predictions: every target up to and including that BOS), as the ``doc`` geometry scores it."""
    tokens = load_tokens(path)
    starts = document_starts(tokens, bos_id)
    preds = np.diff(np.concatenate([starts, [len(tokens) - 1]]))
    preds = np.sort(preds[preds > 0])
    groups = [preds[i:i + batch] for i in range(0, len(preds), batch)]
    return (np.array([[g[0], g[-1]] for g in groups], dtype=np.float64),
            np.array([len(g) for g in groups], dtype=np.int64))


def batch_seconds(longest: float, docs: int, *, chunk: int, window: int, token_s: float, step_s: float) -> float:
    """``t_batch`` of the module docstring."""
    steps = math.ceil(longest / chunk)
    widths = np.minimum((np.arange(steps) + 1) * chunk, window)
    return float(steps * step_s + token_s * docs * widths.sum())


def project(bounds: np.ndarray, *, ranks: int, chunk: int, window: int, token_s: float, step_s: float,
            docs: np.ndarray | None = None) -> dict:
    """Eval seconds (largest rank total), the critical path and the summed work of all ranks; ``docs`` the
    documents per batch (default: 64, and the FineWeb set's 16 in its last batch)."""
    if docs is None:
        docs = np.full(len(bounds), 64)
        docs[-1] = LAST_BATCH_DOCS if len(bounds) == BATCHES else 64
    times = [batch_seconds(hi, int(d), chunk=chunk, window=window, token_s=token_s, step_s=step_s)
             for (_, hi), d in zip(bounds, docs)]
    load = np.zeros(ranks)
    for t in sorted(times, reverse=True):
        load[np.argmin(load)] += t
    return {"eval_s": float(load.max()), "critical_path_s": float(max(times)), "work_s": float(sum(times)),
            "predictions": float(sum(d * (lo + hi) / 2 for (lo, hi), d in zip(bounds, docs)))}


def default_tsv() -> Path:
    """``shared/data/fineweb_val/doc_length_batches.tsv`` beside the checkout (the issue's
    ``../shared/...``) or beside the nearest parent folder that has one (a worktree elsewhere)."""
    repo = Path(__file__).resolve().parents[1]
    rel = Path("shared", "data", "fineweb_val", "doc_length_batches.tsv")
    return next((d / rel for d in repo.parents if (d / rel).is_file()), repo.parent / rel)


@dataclass(frozen=True)
class StepCost:
    """Per-token seconds of a TTT step and where the figure comes from."""

    label: str  # e.g. the contender
    token_s: float
    source: str  # "measured: ..." or "assumed: ..."
    gpu: bool  # measured on a GPU


def costs_from_bench(path: str, *, run_id: str | None = None, scale: float = 1.0) -> list[StepCost]:
    """One :class:`StepCost` per ``ok`` row of the latest run (or ``run_id``) of a ``lora_ttt`` results file."""
    try:
        rows = [r for r in read_results(path) if r.get("bench") == "lora_ttt"]
    except (OSError, ValueError) as e:
        raise ValueError(f"--bench {path}: not a readable results file of the benchmark harness ({e})") from None
    if not rows:
        raise ValueError(f"--bench {path}: no lora_ttt rows (run: python -m benchmarks.run --only lora_ttt)")
    rows = [r for r in rows if r["run_id"] == run_id] if run_id else latest_run(rows)
    costs = []
    for r in rows:
        m = re.match(r"D(\d+)_T(\d+)_", r["case"])
        if r["status"] != "ok" or not m:
            continue
        prov = r.get("provenance", {})
        gpu = r["device"].startswith("cuda")
        machine = prov.get("gpu") if gpu else prov.get("cpu", "CPU")
        costs.append(StepCost(label=f"{r['contender']} {r['case']}", gpu=gpu,
                              token_s=scale * r["time_ms"] * 1e-3 / (int(m[1]) * int(m[2])),
                              source=f"measured: {r['time_ms']:.4g} ms per step of {r['case']} on {r['device']} "
                                     f"({machine}), run {r['run_id']}, x scale {scale:g} (assumed)"))
    if not costs:
        raise ValueError(f"--bench {path}: run {run_id or 'latest'} has no ok lora_ttt row (--run-id picks another)")
    return costs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tsv", default=str(default_tsv()), help="doc_length_batches.tsv (default: ../shared beside the checkout)")
    p.add_argument("--val-shard", help="a real validation shard: its documents (by BOS) instead of --tsv")
    p.add_argument("--bos-id", type=int, default=1, help="BOS id of --val-shard (default 1)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bench", help="bench_lora_ttt results file (<out>/lora_ttt.jsonl): measured per-token times")
    src.add_argument("--token-us", type=float, help="assumed microseconds per token of a TTT step")
    p.add_argument("--run-id", help="the --bench run to use (default: its latest)")
    p.add_argument("--scale", type=float, default=1.0, help="whole step / benchmarked op, assumed (default 1)")
    p.add_argument("--step-ms", type=float, default=0.0, help="assumed fixed milliseconds per step (launches)")
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--chunk", type=int, default=48)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--warmup-s", type=float, default=0.0, help="compile warm-up to add (counted against 600 s)")
    a = p.parse_args(argv)
    if a.val_shard is None and not Path(a.tsv).is_file():
        p.error(f"--tsv {a.tsv}: no such file (doc_length_batches.tsv of ../shared/data/fineweb_val)")
    try:
        costs = (costs_from_bench(a.bench, run_id=a.run_id, scale=a.scale) if a.bench else
                 [StepCost("given", a.token_us * 1e-6, "assumed: --token-us", gpu=False)])
        bounds, docs = batches_from_shard(a.val_shard, bos_id=a.bos_id) if a.val_shard else (read_batches(a.tsv), None)
    except ValueError as e:
        p.error(str(e))
    if a.val_shard:
        print(f"documents: {a.val_shard} ({int(docs.sum())} documents by BOS id {a.bos_id}, {len(bounds)} batches)")
    else:
        print(f"documents: {a.tsv} ({len(bounds)} batches; the record's logged ones, the rest interpolated)")
    print(f"t_step: {a.step_ms:g} ms, assumed (--step-ms)")
    if not any(c.gpu for c in costs):
        print("GPU per-step times: NOT MEASURED. These inputs are not GPU measurements, so neither is any "
              "time below: it is what those inputs give, not a GPU projection.")
    about = ("(from the batches' ends; the time uses only each batch's longest)" if a.val_shard else
             f"(the set has {PREDICTIONS / 1e6:.2f} M: the difference is the interpolation's error)")
    for c in costs:
        r = project(bounds, ranks=a.ranks, chunk=a.chunk, window=a.window, token_s=c.token_s, step_s=a.step_ms * 1e-3,
                    docs=docs)
        print(f"{c.label}: t_token {c.token_s * 1e6:.4g} us ({c.source})")
        print(f"  ranks {a.ranks} chunk {a.chunk} window {a.window}: eval {r['eval_s']:.1f} s (+ warm-up "
              f"{a.warmup_s:.1f} s = {r['eval_s'] + a.warmup_s:.1f} s of 600), critical path "
              f"{r['critical_path_s']:.1f} s, work {r['work_s']:.1f} rank-s, ~{r['predictions'] / 1e6:.2f} M predictions "
              f"{about}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
