"""Quantisation methods on a trained model: quant gap (val_bpb after export minus before) and
artifact bytes for round-to-nearest, GPTQ and GPTQ + LQER at each bit width, with the time spent in
calibration and GPTQ.

    python -m benchmarks.quant_gaps --run-dir runs/demo [--bits 6 5] [--out benchmarks/results/quant_gaps.md]

The run directory is one ``pgolf train`` wrote (``config.json``, ``checkpoint.pt``, its data). Every
method exports the same weights through :func:`pgolf.artifact.export.export_model` (the pipeline's
exporter), reloads the artifact into a fresh model and scores the whole validation split with
:func:`pgolf.eval.flat.evaluate`. Calibration uses ``quant.gptq_batches`` training batches taken after
the last training step (never validation data). A QAT row needs a QAT-trained run: pass that run
with ``--label`` to add it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.codec_sizes import machine
from pgolf.artifact.export import export_model, load_exported
from pgolf.config import RunConfig
from pgolf.data.loader import TokenLoader
from pgolf.data.shards import load_tokens
from pgolf.data.tokenizer import byte_table, load_tokenizer
from pgolf.eval.flat import evaluate
from pgolf.model.gpt import GPT
from pgolf.quant.calibrate import calibration_batches, collect_hessians
from pgolf.train.checkpoint import load_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"


def _score(model: GPT, cfg: RunConfig, tokens: torch.Tensor, table) -> float:
    t = cfg.train
    return evaluate(model, tokens, table, seq_len=t.seq_len, batch_tokens=t.val_batch_size,
                    device=torch.device("cpu")).bpb


def measure(run_dir: Path, bits_list: list[int], label: str) -> list[dict]:
    """One row per (method, bits) for the model of ``run_dir``."""
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    model = GPT(cfg.model)
    model.load_state_dict(ck["model"])
    sp = load_tokenizer(cfg.data.tokenizer)
    table = byte_table(sp, cfg.model.vocab_size)
    tokens = torch.from_numpy(load_tokens(cfg.data.val_glob, vocab_size=cfg.model.vocab_size).astype(np.int64))
    pre = _score(model, cfg, tokens, table)
    t = cfg.train
    loader = TokenLoader(cfg.data.train_glob)
    t0 = time.perf_counter()
    batches = calibration_batches(loader, cfg.quant.gptq_batches, first_step=ck["step"], seq_len=t.seq_len,
                                  batch_tokens=min(t.train_batch_tokens, t.micro_batch_tokens))
    hessians = collect_hessians(model, batches, device=torch.device("cpu"))
    hessian_s = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bits in bits_list:
            for method, hs, lqer in (("rtn", None, 0), ("gptq", hessians, 0), ("gptq+lqer", hessians, 3)):
                q = RunConfig.from_dict(cfg.to_dict()).quant
                q.bits, q.policy, q.lqer_top_k = bits, "", lqer
                path = Path(tmp) / f"{method}{bits}.pgolf"
                t0 = time.perf_counter()
                report = export_model(model, q, path, allow_oversize=True, hessians=hs)
                export_s = time.perf_counter() - t0
                post = _score(load_exported(path), cfg, tokens, table)
                rows.append(dict(model=label, method=method, bits=bits, pre_bpb=pre, post_bpb=post, gap=post - pre,
                                 artifact_bytes=report.bytes_model, export_s=export_s,
                                 calibration_s=hessian_s if hs is not None else 0.0))
    return rows


def to_markdown(rows: list[dict], info: dict) -> str:
    head = ("| model | method | bits | val_bpb before | after export | quant gap | artifact bytes | export s | "
            "Hessians s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {r['model']} | {r['method']} | {r['bits']} | {r['pre_bpb']:.5f} | {r['post_bpb']:.5f} | "
                   f"{r['gap']:+.5f} | {r['artifact_bytes']:,} | {r['export_s']:.1f} | {r['calibration_s']:.1f} |\n"
                   for r in rows)
    prov = ", ".join(f"{k} {v}" for k, v in info.items())
    return f"# Quantisation methods on trained models\n\n{prov}\n\n{head}{body}"


def main(argv: list[str] | None = None) -> int:
    """Entry point; writes the Markdown table (and prints it)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_gaps", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, action="append", required=True, help="a pgolf run directory (repeatable)")
    p.add_argument("--label", action="append", help="a name for each run directory (default: its folder name)")
    p.add_argument("--bits", type=int, nargs="+", default=[6, 5])
    p.add_argument("--out", type=Path, default=RESULTS / "quant_gaps.md")
    args = p.parse_args(argv)
    labels = args.label or [d.name for d in args.run_dir]
    rows = [r for d, label in zip(args.run_dir, labels) for r in measure(d, args.bits, label)]
    text = to_markdown(rows, machine())
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
