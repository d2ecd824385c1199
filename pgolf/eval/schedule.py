"""From a plan of chunks to the engine's steps: rows, batches, sequence numbers, ranks.

A *row* is one forward's context with the targets it scores; a *step* is the rows scored
together (one ``log_probs`` call, then one ``update``); a *group* is the unit a rank takes.

- Stateless predictor: consecutive chunks of a lane with the same context start become one row
  (a document prefix is computed once); rows go into steps in plan order, or longest first when
  the plan pads (documents), at most ``batch_tokens`` padded tokens per step (at least one row).
  Without padding a step holds rows of one length only. Each step is its own group.
- Stateless predictor, ``pack`` (``eval.pack_rows``) and a padding plan: the rows (pieces) are
  packed side by side into forward rows as wide as the plan's longest row (best fit, longest
  first: each piece goes to the forward row with the least room that still holds it), and
  consecutive forward rows form the steps (at most ``batch_tokens`` tokens, at least one forward
  row). A piece is an independent context: the predictor keeps it apart from its neighbours
  (:class:`~pgolf.eval.predictor.PackedRows`). Within a forward row the pieces are numbered from
  the last column to the first, so a predictor that lets a column see an earlier piece of its row
  makes a chunk depend on one scored after it, which the audit's causality check catches.
- Adaptive predictor: one chunk per row. Lanes (documents) are taken longest first,
  ``batch_lanes`` at a time; such a batch is a group whose step ``j`` holds the ``j``-th chunk of
  each of its lanes that has one, so a document's chunks are scored in order with ``update``
  between them.

Sequence numbers count chunks in engine order (group, step, row, stream). Groups are dealt to
ranks largest first, each to the least loaded rank (by padded tokens), so the steps and their
contents, and thus every score, do not depend on the number of ranks.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, replace

import numpy as np

from pgolf.eval.geometry import Plan


@dataclass(frozen=True)
class Step:
    """Rows ``ctx[b] .. stop[b]-2`` of inputs scoring targets ``start[b] .. stop[b]-1``; ``chunks``
    are the plan's chunk indices in row order (each row's chunks contiguous, in stream order).
    Packed (``pack_row`` set): row ``b`` lies in forward row ``pack_row[b]`` from column
    ``pack_offset[b]``."""

    ctx: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    lane: np.ndarray
    chunks: np.ndarray
    pack_row: np.ndarray | None = None
    pack_offset: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        """Inputs of each row."""
        return self.stop - 1 - self.ctx

    @property
    def width(self) -> int:
        """Columns of the forward: the longest row, or the fullest forward row when packed."""
        return int((self.lengths if self.pack_row is None else self.pack_offset + self.lengths).max())

    @property
    def forward_rows(self) -> int:
        return len(self.ctx) if self.pack_row is None else int(self.pack_row.max()) + 1

    @property
    def padded_tokens(self) -> int:
        return self.forward_rows * self.width


@dataclass(frozen=True)
class Schedule:
    """The steps in engine order, the groups of step indices, and each chunk's sequence number."""

    steps: list[Step]
    groups: list[list[int]]
    seq: np.ndarray  # [num_chunks]: sequence number of each plan chunk

    def groups_of_rank(self, rank: int, world_size: int) -> list[int]:
        """The groups ``rank`` scores, in engine order (largest group first to the least loaded rank)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        cost = [sum(self.steps[s].padded_tokens for s in g) for g in self.groups]
        load, owner = [0] * world_size, [0] * len(self.groups)
        for g in sorted(range(len(self.groups)), key=lambda g: -cost[g]):
            r = min(range(world_size), key=lambda r: load[r])
            owner[g] = r
            load[r] += cost[g]
        return [g for g in range(len(self.groups)) if owner[g] == rank]


def _step(plan: Plan, rows: list[np.ndarray]) -> Step:
    """A step of rows, each row an array of contiguous chunk indices."""
    first, last = np.array([r[0] for r in rows]), np.array([r[-1] for r in rows])
    return Step(ctx=plan.ctx[first], start=plan.start[first], stop=plan.stop[last], lane=plan.lane[first],
                chunks=np.concatenate(rows))


def _stateless_steps(plan: Plan, batch_tokens: int, pack: bool) -> list[Step]:
    if not len(plan):
        return []
    new_row = np.ones(len(plan), dtype=bool)
    new_row[1:] = ((plan.lane[1:] != plan.lane[:-1]) | (plan.ctx[1:] != plan.ctx[:-1])
                   | (plan.start[1:] != plan.stop[:-1]))
    bounds = np.flatnonzero(new_row)
    rows = np.split(np.arange(len(plan)), bounds[1:])
    lengths = [int(plan.stop[r[-1]] - 1 - plan.ctx[r[0]]) for r in rows]
    if pack and plan.pad:
        return _packed_steps(plan, rows, lengths, batch_tokens)
    order = sorted(range(len(rows)), key=lambda i: -lengths[i]) if plan.pad else range(len(rows))
    steps, current, width = [], [], 0
    for i in order:
        fits = current and (len(current) + 1) * width <= batch_tokens and (plan.pad or lengths[i] == width)
        if current and not fits:
            steps.append(_step(plan, current))
            current = []
        if not current:
            width = lengths[i]
        current.append(rows[i])
    if current:
        steps.append(_step(plan, current))
    return steps


def _packed_steps(plan: Plan, rows: list[np.ndarray], lengths: list[int], batch_tokens: int) -> list[Step]:
    """Best-fit-decreasing packing of the rows into forward rows (the module docstring)."""
    capacity = max(lengths)
    forward: list[list[int]] = []  # the rows of each forward row, left to right
    room: list[tuple[int, int]] = []  # (free columns, forward row), sorted; full rows leave it
    for i in sorted(range(len(rows)), key=lambda i: -lengths[i]):
        k = bisect.bisect_left(room, (lengths[i], -1))  # the least room that holds the row
        if k == len(room):
            forward.append([])
            free, f = capacity, len(forward) - 1
        else:
            free, f = room.pop(k)
        forward[f].append(i)
        if free > lengths[i]:
            bisect.insort(room, (free - lengths[i], f))
    per_step = max(1, batch_tokens // capacity)
    steps = []
    for first in range(0, len(forward), per_step):
        pieces, pack_row, pack_offset = [], [], []
        for r, members in enumerate(forward[first:first + per_step]):
            offsets = np.cumsum([0] + [lengths[i] for i in members])[:-1]
            for i, offset in reversed(list(zip(members, offsets.tolist()))):  # last column first
                pieces.append(rows[i])
                pack_row.append(r)
                pack_offset.append(offset)
        steps.append(replace(_step(plan, pieces), pack_row=np.array(pack_row, dtype=np.int64),
                             pack_offset=np.array(pack_offset, dtype=np.int64)))
    return steps


def _lane_groups(plan: Plan, batch_lanes: int) -> list[list[Step]]:
    by_lane = np.argsort(plan.lane, kind="stable")  # each lane's chunks, in plan order
    _, counts = np.unique(plan.lane, return_counts=True)
    chunks_of = np.split(by_lane, np.cumsum(counts)[:-1]) if len(plan) else []
    preds = [int((plan.stop[c] - plan.start[c]).sum()) for c in chunks_of]
    order = sorted(range(len(chunks_of)), key=lambda i: -preds[i])  # longest first, stable
    groups = []
    for b in range(0, len(order), batch_lanes):
        members = [chunks_of[i] for i in order[b:b + batch_lanes]]
        depth = max(len(m) for m in members)
        groups.append([_step(plan, [m[j:j + 1] for m in members if j < len(m)]) for j in range(depth)])
    return groups


def build_schedule(plan: Plan, *, stateless: bool, batch_tokens: int, batch_lanes: int,
                   pack: bool = False) -> Schedule:
    """The :class:`Schedule` of ``plan`` for a stateless or an adaptive predictor (module
    docstring); ``pack`` packs a stateless predictor's rows of a padding plan."""
    if batch_tokens <= 0 or batch_lanes <= 0:
        raise ValueError(f"batch_tokens ({batch_tokens}) and batch_lanes ({batch_lanes}) must be positive")
    if stateless:
        steps = _stateless_steps(plan, batch_tokens, pack)
        groups = [[i] for i in range(len(steps))]
    else:
        steps, groups = [], []
        for g in _lane_groups(plan, batch_lanes):
            groups.append(list(range(len(steps), len(steps) + len(g))))
            steps.extend(g)
    seq = np.full(len(plan), -1, dtype=np.int64)
    order = np.concatenate([s.chunks for s in steps]) if steps else np.zeros(0, np.int64)
    seq[order] = np.arange(len(order))
    return Schedule(steps=steps, groups=groups, seq=seq)
