"""The one loop that scores: steps of chunks -> predictor -> gather -> float64 sums -> update.

For each step of its share of the :class:`~pgolf.eval.schedule.Schedule` a rank builds the
:class:`~pgolf.eval.predictor.ChunkBatch`, asks the predictor for full log-probabilities, checks
their shape and finiteness, gathers ``nll_i = -log p_i(t_i)``, adds NLL and bytes to the step's
slot of a :class:`~pgolf.eval.scoring.BpbAccumulator`, and only then calls ``update``. The slots
are all-reduced once and summed in step order, so the totals are the same for any number of
ranks (bit for bit on a CPU) as long as the predictor scores a step the same on any rank (a
warm-started TTT adapter or a cross-document cache carries state along its rank's steps).
Optionally every scored position is recorded (:class:`TokenRecord`) and full distributions are
kept at chosen positions (for the audit).

Time budget: with ``max_seconds > 0``, before each step the engine checks whether the elapsed
scoring + adaptation time plus the longest step so far would pass the budget; from then on every
remaining step on that rank is scored by ``fallback`` (the plain model) and counted in
:attr:`EvalResult.fallback_tokens`. Nothing is dropped. The predictor is told when the engine stops
using it on this rank (:func:`~pgolf.eval.predictor.finish_predictor`): at that switch, or after the
rank's last step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

from pgolf.data.tokenizer import ByteTable
from pgolf.eval.geometry import Geometry, Plan
from pgolf.eval.predictor import ChunkBatch, PackedRows, Predictor, ScoredBatch, finish_predictor
from pgolf.eval.schedule import Schedule, Step, build_schedule
from pgolf.eval.scoring import BpbAccumulator, Score, checked_streams, one_d_stream, token_bytes
from pgolf.util.device import sync
from pgolf.util.progress import progress


class PredictorError(ValueError):
    """A predictor returned something the engine cannot score (wrong shape, non-finite values)."""


@dataclass
class TokenRecord:
    """Per stream position ``i`` (``0 .. M``; position 0 is never a target): how often it was
    scored, its NLL (nats, NaN if never), its bytes and its chunk's sequence number (-1 if never)."""

    count: np.ndarray
    nll: np.ndarray
    bytes: np.ndarray
    seq: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "TokenRecord":
        return cls(count=np.zeros(n, np.int64), nll=np.zeros(n, np.float64), bytes=np.zeros(n, np.int64),
                   seq=np.zeros(n, np.int64))

    def add(self, positions: np.ndarray, nll: np.ndarray, nbytes: np.ndarray, seqs: np.ndarray) -> None:
        np.add.at(self.count, positions, 1)
        self.nll[positions] = nll
        self.bytes[positions] = nbytes
        self.seq[positions] = seqs

    def finish(self) -> None:
        """Sum the records of all ranks (each position is written by one rank) and mark the unscored."""
        if dist.is_available() and dist.is_initialized():
            for name in ("count", "nll", "bytes", "seq"):
                t = torch.from_numpy(getattr(self, name))
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                setattr(self, name, t.numpy())
        never = self.count == 0
        self.nll[never] = np.nan
        self.seq[never] = -1

    def write(self, path: str, tokens: Any) -> None:
        """One tab-separated line per scored position: ``position target nll bytes seq``."""
        from pgolf.util.atomic import atomic_write_text

        pos = np.flatnonzero(self.count)
        toks = np.asarray(tokens)[pos]
        lines = [f"{p}\t{t}\t{n:.9g}\t{b}\t{s}" for p, t, n, b, s in
                 zip(pos.tolist(), toks.tolist(), self.nll[pos].tolist(), self.bytes[pos].tolist(),
                     self.seq[pos].tolist())]
        atomic_write_text(path, "position\ttarget\tnll\tbytes\tseq\n" + "".join(line + "\n" for line in lines))


@dataclass
class EvalResult:
    """The score of one evaluation and how it was reached."""

    mode: str
    score: Score
    chunks: int
    steps: int
    fallback_tokens: int = 0  # targets scored by the fallback after the time budget ran out
    seconds: dict[str, float] = field(default_factory=dict)  # "score", "adapt"
    record: TokenRecord | None = None
    captured: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> [V] log-probs
    counts: dict[str, int] = field(default_factory=dict)  # the predictor's own counters (e.g. TTT fallbacks)


def _as_int64(stream: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A checked 1-D stream (:func:`pgolf.eval.scoring.checked_streams`) as an int64 tensor."""
    return stream.to(torch.int64) if isinstance(stream, torch.Tensor) else torch.from_numpy(stream.astype(np.int64))


def check_log_probs(lp: Any, batch: ChunkBatch, predictor: Predictor) -> torch.Tensor:
    """``lp`` if it is a finite float tensor ``[n, V]``; a :class:`PredictorError` naming the problem otherwise."""
    name = type(predictor).__name__
    n = batch.num_scored
    if not isinstance(lp, torch.Tensor) or lp.ndim != 2 or lp.shape[0] != n or not lp.is_floating_point():
        shape = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
        raise PredictorError(f"{name}.log_probs returned {shape}; expected a float tensor [n={n}, vocab] of "
                             f"log-probabilities (chunks from seq {int(batch.seqs.min())})")
    bad = ~torch.isfinite(lp.detach()).all(dim=1)
    if bool(bad.any()):
        where = batch.positions[bad][:5].tolist()
        raise PredictorError(f"{name}.log_probs returned non-finite values at stream positions {where} "
                             f"(chunk seq {int(batch.seqs[bad][0])}); log-probabilities must be finite")
    return lp


def evaluate_geometry(geometry: Geometry | Plan, predictor: Predictor, tokens: Any, table: ByteTable | None = None,
                      *, byte_counts: Any = None, device: torch.device | str = "cpu", batch_tokens: int = 65536,
                      batch_lanes: int = 64, pack_rows: bool = False, rank: int = 0, world_size: int = 1,
                      max_seconds: float = 0.0, fallback: Predictor | None = None, record: bool = False,
                      capture: Iterable[int] = (), clock: Callable[[], float] = time.perf_counter,
                      show_progress: bool = False) -> EvalResult:
    """Score every target of ``tokens`` once with ``predictor`` under ``geometry``; global totals.

    ``byte_counts`` (per-token bytes, ``len(tokens)`` long) replaces ``table``. ``batch_tokens``
    caps a step's padded tokens (stateless predictors), ``batch_lanes`` the documents scored side
    by side (adaptive ones); ``pack_rows`` packs a stateless predictor's ``doc`` rows several to a
    forward row (:mod:`pgolf.eval.schedule`). ``record`` keeps a :class:`TokenRecord`; ``capture``
    positions get their full log-probabilities kept (this rank's). ``show_progress`` draws a bar of
    this rank's steps for a person at a terminal (:func:`pgolf.util.progress.progress`). See the module
    docstring for the budget.
    """
    device = torch.device(device)
    toks, counts = checked_streams(tokens, byte_counts, table, "evaluate_geometry")
    toks = _as_int64(toks)
    counts = None if counts is None else _as_int64(counts)
    if max_seconds > 0 and fallback is None:
        raise ValueError("a time budget (max_seconds > 0) needs a fallback predictor for the chunks past it")
    plan = geometry if isinstance(geometry, Plan) else geometry.plan(toks)
    schedule = schedule_of(plan, toks, predictor, batch_tokens=batch_tokens, batch_lanes=batch_lanes,
                           pack_rows=pack_rows)
    my_steps = [s for g in schedule.groups_of_rank(rank, world_size) for s in schedule.groups[g]]
    acc = BpbAccumulator(table, device=device, slots=max(len(schedule.steps), 1))
    rec = TokenRecord.empty(len(toks)) if record else None
    capture = set(int(p) for p in capture)
    result = EvalResult(mode=plan.name, score=acc.result(), chunks=len(plan), steps=len(schedule.steps),
                        seconds={"score": 0.0, "adapt": 0.0}, record=rec)
    chunk_sizes = plan.stop - plan.start
    longest, active = 0.0, predictor
    for index in progress(my_steps, desc=f"eval {plan.name}", unit="step", enabled=show_progress):
        step = schedule.steps[index]
        spent = result.seconds["score"] + result.seconds["adapt"]
        if max_seconds > 0 and active is not fallback and spent + longest > max_seconds:
            finish_predictor(active, out_of_time=True)
            active = fallback
        t0 = clock()
        batch = make_batch(step, toks, schedule.seq, chunk_sizes, device)
        lp = check_log_probs(active.log_probs(batch), batch, active)
        targets = toks[batch.positions.cpu()].to(device)
        if len(targets) and int(targets.max()) >= lp.shape[1]:
            raise PredictorError(f"{type(active).__name__}.log_probs returned {lp.shape[1]} columns, but the "
                                 f"stream holds token id {int(targets.max())}: one column per vocabulary entry")
        nll = -lp.gather(1, targets[:, None]).squeeze(1)
        pos = batch.positions
        prev = toks[(pos - 1).cpu()].to(device)
        nbytes = (counts[pos.cpu()].to(device) if counts is not None else token_bytes(prev, targets, acc.table))
        acc.add(nll.detach(), prev, targets, nbytes, slot=index)
        if active is fallback and active is not predictor:
            result.fallback_tokens += len(pos)
        if rec is not None:
            rec.add(pos.cpu().numpy(), nll.detach().double().cpu().numpy(), nbytes.cpu().numpy(),
                    batch.seqs.cpu().numpy())
        for i in np.flatnonzero(np.isin(pos.cpu().numpy(), list(capture))) if capture else ():
            result.captured[int(pos[i])] = lp[i].detach().float().cpu().clone()
        sync(device)
        t1 = clock()
        active.update(ScoredBatch(batch=batch, targets=targets, nll=nll))
        sync(device)
        t2 = clock()
        result.seconds["score"] += t1 - t0
        result.seconds["adapt"] += t2 - t1
        longest = max(longest, t2 - t0)
    if active is predictor:
        finish_predictor(predictor, out_of_time=False)
    acc.all_reduce()
    result.score = acc.result()
    if dist.is_available() and dist.is_initialized():
        fb = torch.tensor([result.fallback_tokens], dtype=torch.int64, device=device)
        dist.all_reduce(fb, op=dist.ReduceOp.SUM)
        result.fallback_tokens = int(fb.item())
    if rec is not None:
        rec.finish()
    return result


def _lay_out(tokens: torch.Tensor, ctx: np.ndarray, lengths: np.ndarray, row: np.ndarray, offset: np.ndarray,
             shape: tuple[int, int]) -> torch.Tensor:
    """Int64 ``shape`` of zeros holding ``tokens[ctx[b] : ctx[b] + lengths[b]]`` in row ``row[b]``
    from column ``offset[b]``, for every ``b``."""
    which = np.repeat(np.arange(len(lengths)), lengths)
    j = np.arange(len(which)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = torch.zeros(shape, dtype=torch.int64)
    out[torch.from_numpy(row[which]), torch.from_numpy(offset[which] + j)] = \
        tokens[torch.from_numpy(ctx[which] + j)].cpu()
    return out


def make_batch(step: Step, tokens: torch.Tensor, seq: np.ndarray, chunk_sizes: np.ndarray,
               device: torch.device) -> ChunkBatch:
    """The :class:`ChunkBatch` of ``step`` (inputs right-padded with 0; :class:`PackedRows` too
    when the step is packed)."""
    lengths = step.lengths
    num = len(lengths)
    inputs = _lay_out(tokens, step.ctx, lengths, np.arange(num), np.zeros(num, np.int64), (num, int(lengths.max())))
    packed = None
    if step.pack_row is not None:
        shape = (step.forward_rows, step.width)
        starts = torch.zeros(shape, dtype=torch.bool)
        starts[torch.from_numpy(step.pack_row), torch.from_numpy(step.pack_offset)] = True
        packed = PackedRows(inputs=_lay_out(tokens, step.ctx, lengths, step.pack_row, step.pack_offset, shape)
                            .to(device), starts=starts.to(device),
                            row=torch.from_numpy(step.pack_row).to(device),
                            offset=torch.from_numpy(step.pack_offset).to(device))
    rows = np.repeat(np.arange(len(lengths)), step.stop - step.start)
    positions = np.concatenate([np.arange(a, z) for a, z in zip(step.start.tolist(), step.stop.tolist())])
    cols = positions - 1 - step.ctx[rows]
    seqs = np.repeat(seq[step.chunks], chunk_sizes[step.chunks])

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    return ChunkBatch(inputs=inputs.to(device), lengths=put(lengths), context_start=put(step.ctx),
                      lanes=put(step.lane), rows=put(rows), cols=put(cols), positions=put(positions), seqs=put(seqs),
                      packed=packed)


def schedule_of(geometry: Geometry | Plan, tokens: Any, predictor: Predictor, *, batch_tokens: int,
                batch_lanes: int, pack_rows: bool = False) -> Schedule:
    """The schedule :func:`evaluate_geometry` would run (for inspection and benchmarks)."""
    plan = geometry if isinstance(geometry, Plan) else geometry.plan(_as_int64(one_d_stream(tokens, "tokens")))
    return build_schedule(plan, stateless=bool(getattr(predictor, "stateless", False)),
                          batch_tokens=batch_tokens, batch_lanes=batch_lanes, pack=pack_rows)
