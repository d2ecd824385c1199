"""Scoring a validation stream in the ``doc`` and ``sliding`` geometries with the plain model.

Contenders (same geometry, same model, same stream):
  * ``one forward per window`` (baseline): the straightforward implementation, every chunk of the
    plan as its own batch-1 forward over its context, NLL gathered at the chunk's targets;
  * ``pgolf engine``: :func:`pgolf.eval.engine.evaluate_geometry` with
    :class:`~pgolf.eval.predictor.PlainModel` (document prefixes computed once, rows batched up
    to ``batch_tokens`` padded tokens, documents sorted by length);
  * ``pgolf engine, packed rows``: the same with ``pack_rows=True`` (``eval.pack_rows``): ``doc``
    rows packed several to a forward row behind a document mask (masked SDPA on a CPU, flash-attn
    varlen on CUDA when installed); on ``sliding`` it is the plain engine (nothing to pack).

Both return ``(total NLL, targets, device type)``; the check wants the same count and the NLL
within 1e-5 relative in float32 on a CPU, 2e-3 under bf16 autocast on a GPU (the batched forward
rounds differently). Tokens per second = targets / time.

Cases: ``tiny`` (CPU smoke test) a 2-layer width-32 model on 600 tokens; ``full`` the demo
preset's model (4 x 128, vocab 512, window 256: doc chunk 48, sliding stride 64; and doc at the
record's window 2048, where length-sorted rows are about half padding and packing pays) on 65,536
tokens, and the baseline's 9 x 512 model with vocab 8192 at the record's eval shapes (window 2048, doc
chunk 48, sliding stride 64) on 65,536 tokens (GPU). Documents have geometric lengths (mean 600
tokens). FLOPs: ``2 * matrix parameters * targets``, the forward work if every target were
computed once.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from benchmarks.harness import Benchmark, Case, Contender
from pgolf.config import ModelConfig
from pgolf.eval.engine import evaluate_geometry
from pgolf.eval.geometry import Doc, Plan, Sliding
from pgolf.eval.predictor import PlainModel
from pgolf.model.gpt import GPT
from pgolf.util.device import autocast_for

BOS = 1
TINY = dict(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)
DEMO = dict(vocab_size=512, num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2)
RECORD = dict(vocab_size=8192, num_layers=9, model_dim=512, num_heads=8, num_kv_heads=4)


@functools.cache
def _model(shape: tuple, device: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(**dict(shape))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(device)


def _stream(num_tokens: int, vocab: int, seed: int) -> torch.Tensor:
    gen = np.random.default_rng(seed)
    toks = gen.integers(2, vocab, num_tokens + 1)
    pos = 0
    while pos < len(toks):
        toks[pos] = BOS
        pos += 1 + int(gen.geometric(1 / 600))
    return torch.from_numpy(toks.astype(np.int64))


def _case(name: str, shape: dict, geometry, num_tokens: int, batch_tokens: int) -> Case:
    def make_inputs(device: torch.device, seed: int) -> tuple:
        model = _model(tuple(sorted(shape.items())), str(device))
        return model, _stream(num_tokens, shape["vocab_size"], seed), geometry, batch_tokens

    d, layers, mult = shape["model_dim"], shape["num_layers"], 2
    kv = d * shape["num_kv_heads"] // shape["num_heads"]
    matrix_params = layers * (2 * d * d + 2 * kv * d + 2 * mult * d * d) + shape["vocab_size"] * d
    return Case(name=name, make_inputs=make_inputs, flops=2.0 * matrix_params * num_tokens, bytes=0.0)


def demo_cases(num_tokens: int = 65_536) -> list[Case]:
    """The demo model's cases (also what ``python -m benchmarks.bench_eval_geometry`` times on a CPU)."""
    return [_case("doc_C48_W256_demo", DEMO, Doc(48, 256, BOS), num_tokens, 16_384),
            _case("doc_C48_W2048_demo", DEMO, Doc(48, 2048, BOS), num_tokens, 16_384),
            _case("sliding_W256_S64_demo", DEMO, Sliding(256, 64), num_tokens, 16_384)]


def cases(size: str) -> list[Case]:
    if size == "tiny":
        return [_case("doc_C8_W32_tiny", TINY, Doc(8, 32, BOS), 600, 512),
                _case("sliding_W32_S8_tiny", TINY, Sliding(32, 8), 600, 512)]
    return demo_cases() + [
            _case("doc_C48_W2048_record", RECORD, Doc(48, 2048, BOS), 65_536, 131_072),
            _case("sliding_W2048_S64_record", RECORD, Sliding(2048, 64), 65_536, 131_072)]


def one_forward_per_window(model: GPT, tokens: torch.Tensor, geometry, batch_tokens: int) -> tuple[float, int, str]:
    plan: Plan = geometry.plan(tokens)
    device = next(model.parameters()).device
    toks = tokens.to(device)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    with torch.inference_mode(), autocast_for(device):
        for start, stop, ctx in zip(plan.start.tolist(), plan.stop.tolist(), plan.ctx.tolist()):
            nll = model.token_nll(toks[None, ctx:stop - 1], toks[None, ctx + 1:stop])[0]
            total += nll[start - 1 - ctx:].double().sum()
            count += stop - start
    return float(total), count, device.type


def pgolf_engine(model: GPT, tokens: torch.Tensor, geometry, batch_tokens: int,
                 pack_rows: bool = False) -> tuple[float, int, str]:
    device = next(model.parameters()).device
    score = evaluate_geometry(geometry, PlainModel(model, device), tokens, byte_counts=torch.ones_like(tokens),
                              device=device, batch_tokens=batch_tokens, pack_rows=pack_rows).score
    return score.nll, score.tokens, device.type


def pgolf_engine_packed(model: GPT, tokens: torch.Tensor, geometry, batch_tokens: int) -> tuple[float, int, str]:
    return pgolf_engine(model, tokens, geometry, batch_tokens, pack_rows=True)


def check(out, ref) -> str | None:
    (nll, n, device), (ref_nll, ref_n, _) = out, ref
    if n != ref_n:
        return f"scored {n} targets, the reference {ref_n}"
    tol = 1e-5 if device == "cpu" else 2e-3
    err = abs(nll - ref_nll) / abs(ref_nll)
    return None if err < tol else f"total NLL {nll:.6f} vs {ref_nll:.6f} (relative error {err:.2e} >= {tol:g})"


BENCHMARK = Benchmark(
    name="eval_geometry",
    cases=cases,
    contenders=[Contender("one forward per window", one_forward_per_window), Contender("pgolf engine", pgolf_engine),
                Contender("pgolf engine, packed rows", pgolf_engine_packed)],
    reference=one_forward_per_window,
    check=check,
    baseline="one forward per window",
)


def main(argv: list[str] | None = None) -> None:
    """Time the demo cases on this machine's CPU (the harness's ``full`` size needs a GPU) and
    print tokens per second and the engine's speedup."""
    import argparse

    from benchmarks.harness import default_timing, measure_peaks, run_benchmark

    parser = argparse.ArgumentParser(description="eval geometries on the CPU at the demo model's shapes")
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--case", action="append", help="time only this case (repeatable; default: all)")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    chosen = [c for c in demo_cases(args.tokens) if not args.case or c.name in args.case]
    if not chosen:
        parser.error(f"--case: no demo case named {args.case}; cases: "
                     f"{', '.join(c.name for c in demo_cases(args.tokens))}")
    bench = Benchmark(**{**BENCHMARK.__dict__, "cases": lambda size: chosen})
    timing = default_timing(device)
    rows = run_benchmark(bench, size="full", device=device, peaks=measure_peaks(device),
                         timing=type(timing)(**{**timing.__dict__, "min_reps": 1, "max_rotate": 1}))
    for r in rows:
        rate = f"{args.tokens / (r.time_ms / 1000):,.0f} tokens/s" if r.time_ms else r.message
        print(f"{r.case:<24} {r.contender:<26} {r.status:<8} {r.time_ms or 0:>10.0f} ms  {rate:>18}  "
              f"speedup {r.speedup or 0:.2f}x")


if __name__ == "__main__":
    main()
