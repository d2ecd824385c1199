"""``pgolf audit``: black-box checks that an evaluation path is legal (CHALLENGE.md, "Legality").

:func:`audit` runs the engine with a fresh predictor (from a factory) on a validation stream,
then again with single tokens changed, and checks five rules:

- **single_pass**: every target ``1 .. M`` is scored exactly once.
- **normalisation**: at sampled positions the full distribution sums to one,
  ``|logsumexp(log p)| < 1e-5`` (float32). The engine has no target-only fast path, so there is
  nothing else to compare.
- **causality**: change the token at ``p`` (to a random non-BOS id) and rerun; every position
  ``q != p`` scored before ``p`` (a lower sequence number, or the same chunk and ``q < p``) must
  score the same (bitwise on a CPU; ``tolerance`` for GPU runs).
- **no_peeking**: in that rerun the score at ``p`` must be ``-log p(y')`` read from the *first*
  run's full distribution at ``p``: the distribution at ``p`` does not depend on the token it
  predicts.
- **score_before_update**: an instrumented run checks that ``update`` only ever sees chunks
  already scored, and asks the predictor again, just before each ``update``, for the distribution
  it was scored with: a predictor whose state moved while scoring (trained on the chunk before
  answering) gives a different answer.

The positions ``p`` are chosen as: right before and right after a BOS, inside the longest
document, and at random (never a BOS and never position 0; a BOS marks document boundaries,
which every geometry may know in advance).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from pgolf.data.tokenizer import ByteTable
from pgolf.eval.engine import EvalResult, evaluate_geometry
from pgolf.eval.geometry import Geometry, Plan
from pgolf.eval.predictor import ChunkBatch, Predictor, ScoredBatch

RULES = ("single_pass", "normalisation", "causality", "no_peeking", "score_before_update")
NORM_TOL = 1e-5


@dataclass
class Check:
    """One rule's verdict; ``detail`` names the first violations (or what was checked)."""

    rule: str
    passed: bool
    detail: str


@dataclass
class AuditReport:
    """The verdicts of one audit."""

    mode: str
    targets: int
    positions: list[int]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failed(self) -> list[str]:
        """The rules that failed."""
        return [c.rule for c in self.checks if not c.passed]

    def table(self) -> str:
        """The verdict table, one rule per line, and the overall verdict."""
        lines = [f"audit of mode {self.mode}: {self.targets} targets, changed positions {self.positions}",
                 f"{'rule':<20} {'verdict':<7} detail"]
        lines += [f"{c.rule:<20} {'PASS' if c.passed else 'FAIL':<7} {c.detail}" for c in self.checks]
        lines.append(f"verdict: {'LEGAL' if self.passed else 'ILLEGAL (' + ', '.join(self.failed()) + ')'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2)


def pick_positions(tokens: torch.Tensor, bos_id: int, count: int, seed: int) -> list[int]:
    """Up to ``count`` positions to change: around BOSes, inside the longest document, random."""
    toks = tokens.numpy()
    m = len(toks) - 1
    ok = lambda p: 1 <= p <= m and toks[p] != bos_id  # noqa: E731
    gen = np.random.default_rng(seed)
    bos = np.flatnonzero(toks == bos_id)
    picks: list[int] = []
    for b in gen.permutation(bos[bos > 1])[:2]:
        picks += [int(b) - 1, int(b) + 1]
    if len(bos):
        edges = np.concatenate([bos, [m + 1]])
        longest = int(np.argmax(np.diff(edges)))
        lo, hi = int(edges[longest]), int(edges[longest + 1])
        picks += [(lo + hi) // 2, lo + 3 * (hi - lo) // 4]
    picks += [int(p) for p in gen.integers(1, max(m, 1) + 1, size=count)]
    out: list[int] = []
    for p in picks:
        if ok(p) and p not in out:
            out.append(p)
    return out[:count]


class _Instrumented:
    """Wraps a predictor: records what was scored and re-asks for each chunk's distribution before
    its update."""

    def __init__(self, inner: Predictor):
        self.inner, self.stateless = inner, inner.stateless
        self.scored: set[int] = set()
        self.problems: list[str] = []
        self._last: torch.Tensor | None = None

    def log_probs(self, batch: ChunkBatch) -> torch.Tensor:
        lp = self.inner.log_probs(batch)
        self._last = lp.detach().clone()
        self.scored.update(batch.seqs.unique().tolist())
        return lp

    def update(self, scored: ScoredBatch) -> None:
        seqs = set(scored.batch.seqs.unique().tolist())
        if not seqs <= self.scored:
            self.problems.append(f"update on chunks {sorted(seqs - self.scored)[:5]} before they were scored")
        again = self.inner.log_probs(scored.batch).detach()
        if self._last is None or not torch.equal(again, self._last):
            first = int(scored.batch.seqs.min())
            self.problems.append(f"the distribution of chunk {first} changed between scoring and its update: "
                                 f"the predictor's state moved while it scored (trained before scoring?)")
        self.inner.update(scored)


def _first_differences(a: np.ndarray, b: np.ndarray, where: np.ndarray, tol: float) -> np.ndarray:
    return where[np.abs(a[where] - b[where]) > tol]


def audit(make_predictor: Callable[[], Predictor], tokens: Any, table: ByteTable | None,
          geometry: Geometry | Plan | Callable[[torch.Tensor], Plan], *, byte_counts: Any = None,
          positions: list[int] | None = None, num_positions: int = 6, num_normalisation: int = 32, seed: int = 0,
          bos_id: int = 1, tolerance: float = 0.0, device: torch.device | str = "cpu", batch_tokens: int = 65536,
          batch_lanes: int = 64, pack_rows: bool = False) -> AuditReport:
    """Audit an evaluation path: the engine with predictors from ``make_predictor`` (a fresh one per
    run) under ``geometry`` on ``tokens`` (module docstring). ``geometry`` may also be a function
    from the token stream to a :class:`Plan` (for custom scoring orders); ``pack_rows`` audits the
    packed batching (:mod:`pgolf.eval.schedule`)."""
    toks = torch.as_tensor(np.asarray(tokens), dtype=torch.int64).clone()
    gen = np.random.default_rng(seed)
    positions = pick_positions(toks, bos_id, num_positions, seed) if positions is None else list(positions)
    m = len(toks) - 1
    sample = [int(p) for p in gen.integers(1, max(m, 1) + 1, size=num_normalisation)] if m else []

    def plan_of(t: torch.Tensor) -> Plan:
        if isinstance(geometry, Plan):
            return geometry
        return geometry.plan(t) if hasattr(geometry, "plan") else geometry(t)

    def run(t: torch.Tensor, predictor: Predictor, capture: list[int] = ()) -> EvalResult:
        return evaluate_geometry(plan_of(t), predictor, t, table, byte_counts=byte_counts, device=device,
                                 batch_tokens=batch_tokens, batch_lanes=batch_lanes, pack_rows=pack_rows, record=True,
                                 capture=capture)

    base = run(toks, make_predictor(), positions + sample)
    rec = base.record
    report = AuditReport(mode=plan_of(toks).name, targets=m, positions=positions)

    bad = np.flatnonzero(rec.count[1:] != 1) + 1
    report.checks.append(Check("single_pass", not len(bad), "every target scored exactly once" if not len(bad) else
                               "; ".join(f"position {p} scored {rec.count[p]} times" for p in bad[:3])
                               + f" ({len(bad)} positions)"))

    lse = {p: float(torch.logsumexp(lp.float(), 0)) for p, lp in sorted(base.captured.items())}
    off = {p: v for p, v in lse.items() if not abs(v) < NORM_TOL}
    report.checks.append(Check("normalisation", not off, f"|logsumexp| < {NORM_TOL:g} at {len(lse)} positions"
                               if not off else "; ".join(f"logsumexp {v:+.3g} at position {p}"
                                                         for p, v in list(off.items())[:3])))

    causal, peek = [], []
    vocab = next(iter(base.captured.values())).numel() if base.captured else 0
    pos_all = np.arange(len(toks))
    for p in positions:
        y = int(toks[p])
        y2 = int(gen.choice([v for v in range(vocab) if v not in (y, bos_id)]))
        changed = toks.clone()
        changed[p] = y2
        rec2 = run(changed, make_predictor()).record
        seq_p = rec.seq[p]
        earlier = ((rec.seq < seq_p) | ((rec.seq == seq_p) & (pos_all < p))) & (rec.count > 0) & (pos_all != p)
        diff = _first_differences(rec.nll, rec2.nll, np.flatnonzero(earlier), tolerance)
        if len(diff):
            q = int(diff[0])
            causal.append(f"changing the token at {p} changed the score at {q} (scored before it: seq {rec.seq[q]} "
                          f"vs {seq_p}) by {rec2.nll[q] - rec.nll[q]:+.3g} ({len(diff)} positions)")
        want = -float(base.captured[p][y2])
        if not abs(rec2.nll[p] - want) <= tolerance:
            peek.append(f"at {p} the score of the new token {y2} is {rec2.nll[p]:.6g} nats, but the first run's "
                        f"distribution gave it {want:.6g}: the distribution depends on the token it predicts")
    report.checks.append(Check("causality", not causal, f"{len(positions)} changed positions, earlier scores "
                               f"unchanged (tolerance {tolerance:g})" if not causal else "; ".join(causal[:2])))
    report.checks.append(Check("no_peeking", not peek, f"{len(positions)} changed positions scored from the first "
                               f"run's distribution" if not peek else "; ".join(peek[:2])))

    probe = _Instrumented(make_predictor())
    run(toks, probe)
    report.checks.append(Check("score_before_update", not probe.problems,
                               f"{len(probe.scored)} chunks, each updated after it was scored, from the state "
                               f"it was scored with" if not probe.problems else "; ".join(probe.problems[:2])))
    return report
