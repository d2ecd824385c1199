"""Projected whole-eval time of per-document LoRA TTT on N ranks, from a per-step cost model.

Documents: the FineWeb validation set's length-sorted batches of 64 (``doc_length_batches.tsv``:
the shortest and longest document of 213 of the 782 batches; the others interpolated linearly in
the batch index, and a batch's 64 lengths spread evenly between its two ends). A batch of ``D``
documents with longest ``P`` takes ``ceil(P / C)`` steps; step ``j`` runs forward + backward + the
optimizer over ``D x w_j`` tokens, ``w_j = min((j + 1) C, W)`` (the record pads every row to
``w_j``), so

    t_batch = sum_j (t_step + t_token * D * w_j)

Batches go longest first to the least loaded rank (the record's queue and pgolf's schedule both
approximate this); the eval time is the largest rank total, and the *critical path* is the
longest batch alone (no rank can finish before it). ``t_token`` and ``t_step`` are inputs: measure
them (``benchmarks/bench_lora_ttt.py`` on the device) -- figures passed from a CPU are CPU
figures, and no GPU figure here is measured unless its inputs were.

    python -m benchmarks.ttt_projection --tsv PATH --token-us 0.02 --step-ms 5 [--ranks 8]
"""
from __future__ import annotations

import argparse
import math

import numpy as np

BATCHES, DOCS, LAST_BATCH_DOCS = 782, 50_000, 16


def read_batches(path: str) -> np.ndarray:
    """``[782, 2]`` (shortest, longest) document length of every batch, interpolated where the file has none."""
    rows = [line.split("\t") for line in open(path) if line.strip() and not line.startswith(("#", "batch"))]
    k = np.array([int(r[0]) for r in rows])
    lo, hi = np.array([float(r[1]) for r in rows]), np.array([float(r[2]) for r in rows])
    every = np.arange(1, BATCHES + 1)
    return np.stack([np.interp(every, k, lo), np.interp(every, k, hi)], 1)


def batch_seconds(longest: float, docs: int, *, chunk: int, window: int, token_s: float, step_s: float) -> float:
    """``t_batch`` of the module docstring."""
    steps = math.ceil(longest / chunk)
    widths = np.minimum((np.arange(steps) + 1) * chunk, window)
    return float(steps * step_s + token_s * docs * widths.sum())


def project(bounds: np.ndarray, *, ranks: int, chunk: int, window: int, token_s: float, step_s: float) -> dict:
    """Eval seconds (largest rank total), the critical path and the summed work of all ranks."""
    docs = np.full(len(bounds), 64)
    docs[-1] = LAST_BATCH_DOCS if len(bounds) == BATCHES else 64
    times = [batch_seconds(hi, int(d), chunk=chunk, window=window, token_s=token_s, step_s=step_s)
             for (_, hi), d in zip(bounds, docs)]
    load = np.zeros(ranks)
    for t in sorted(times, reverse=True):
        load[np.argmin(load)] += t
    return {"eval_s": float(load.max()), "critical_path_s": float(max(times)), "work_s": float(sum(times)),
            "predictions": float(sum(d * (lo + hi) / 2 for (lo, hi), d in zip(bounds, docs)))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tsv", required=True, help="doc_length_batches.tsv")
    p.add_argument("--token-us", type=float, required=True, help="microseconds per token of a TTT step (measured)")
    p.add_argument("--step-ms", type=float, required=True, help="fixed milliseconds per step (launches, optimizer)")
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--chunk", type=int, default=48)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--warmup-s", type=float, default=0.0, help="compile warm-up to add (counted against 600 s)")
    a = p.parse_args(argv)
    r = project(read_batches(a.tsv), ranks=a.ranks, chunk=a.chunk, window=a.window, token_s=a.token_us * 1e-6,
                step_s=a.step_ms * 1e-3)
    print(f"ranks {a.ranks} chunk {a.chunk} window {a.window}: eval {r['eval_s']:.1f} s (+ warm-up {a.warmup_s:.1f} s "
          f"= {r['eval_s'] + a.warmup_s:.1f} s of 600), critical path {r['critical_path_s']:.1f} s, "
          f"work {r['work_s']:.1f} rank-s, ~{r['predictions'] / 1e6:.2f} M predictions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
