"""Scoring geometries and schedules: every target scored exactly once, contexts as specified.

Properties over random stream lengths, document layouts, windows, strides and chunks (including
streams shorter than one window, a last window shorter than the stride and documents longer than
the window), checked on the plan, on both schedules (and the packed one) and through the engine.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.eval.engine import evaluate_geometry
from pgolf.eval.geometry import Doc, Flat, GeometryError, Sliding, document_starts, make_geometry
from pgolf.eval.schedule import build_schedule

BOS = 1
V = 16


@st.composite
def streams(draw):
    """A token stream (ids 2..V-1) with BOS at random places, sometimes not at position 0."""
    n = draw(st.integers(0, 160))
    toks = np.array(draw(st.lists(st.integers(2, V - 1), min_size=n, max_size=n)), dtype=np.int64)
    for p in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=12)):
        if n:
            toks[p] = BOS
    if n and draw(st.booleans()):
        toks[0] = BOS
    return toks


@st.composite
def geometries(draw):
    window = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["flat", "sliding", "doc"]))
    if kind == "flat":
        return Flat(window)
    if kind == "sliding":
        return Sliding(window, draw(st.integers(1, window)))
    return Doc(draw(st.integers(1, window)), window, BOS)


def _doc_of(toks: np.ndarray) -> np.ndarray:
    """Document index of every stream position (the BOS starting it belongs to it)."""
    starts = document_starts(toks, BOS)
    return np.searchsorted(starts, np.arange(len(toks)), side="right") - 1


def check_plan(geo, toks):
    plan = geo.plan(toks)
    m = max(len(toks) - 1, 0)
    scored = np.concatenate([np.arange(a, z) for a, z in zip(plan.start, plan.stop)]) if len(plan) else []
    assert sorted(scored) == list(range(1, m + 1)), "every target exactly once"
    assert (plan.stop > plan.start).all() and (plan.ctx <= plan.start - 1).all()
    width = plan.stop - 1 - plan.ctx  # inputs of each chunk's context
    if isinstance(geo, Flat):
        assert (width <= geo.window).all() and (plan.ctx % geo.window == 0).all()
        assert (plan.start - 1 == plan.ctx).all()  # a window scores all its targets
    if isinstance(geo, Sliding):
        assert (width <= geo.window).all()
        assert (plan.stop[1:] - plan.start[1:] <= geo.stride).all()
        assert (plan.ctx[1:] - plan.ctx[:-1] == geo.stride).all()
    if isinstance(geo, Doc) and len(plan):  # (a stream of 0 or 1 tokens has no target and no document)
        doc = _doc_of(toks)
        assert (plan.stop - plan.start <= geo.chunk).all() and (width <= geo.window).all()
        # The targets of a chunk belong to the chunk's document (its last may be the next BOS), the
        # context never reaches into an earlier document, and it is the longest the window allows.
        first_input, last_target = doc[plan.ctx], doc[plan.stop - 1]
        assert (doc[plan.start - 1] == first_input).all() and (doc[plan.stop - 2] == first_input).all()
        assert ((last_target == first_input) | (toks[plan.stop - 1] == BOS)).all()
        starts = document_starts(toks, BOS)[first_input]
        assert ((plan.ctx == starts) | (width == geo.window)).all()
    return plan


@settings(max_examples=150, deadline=None)
@given(streams(), geometries())
def test_plan_scores_every_target_once(toks, geo):
    if isinstance(geo, Doc) and len(toks) > 1 and not (toks == BOS).any():
        with pytest.raises(GeometryError, match="holds none"):
            geo.plan(toks)
        return
    check_plan(geo, toks)


def check_packing(plan, step, batch_tokens, seq):
    """A packed step: each forward row holds its pieces side by side from column 0 without overlap,
    no wider than the plan's longest row, at most ``batch_tokens`` tokens (or one forward row), and
    its pieces numbered from the last column to the first."""
    capacity = int((plan.stop - 1 - plan.ctx).max())
    assert step.width <= capacity and step.padded_tokens <= max(batch_tokens, capacity)
    targets = step.stop - step.start
    before = np.cumsum(targets) - targets  # targets of the earlier pieces of the step
    first_chunk = np.searchsorted(np.cumsum(plan.stop[step.chunks] - plan.start[step.chunks]), before, side="right")
    for r in range(step.forward_rows):
        mine = np.flatnonzero(step.pack_row == r)
        assert len(mine), "no empty forward row"
        by_col = mine[np.argsort(step.pack_offset[mine])]
        ends = step.pack_offset[by_col] + step.lengths[by_col]
        assert step.pack_offset[by_col[0]] == 0 and (step.pack_offset[by_col[1:]] == ends[:-1]).all()
        assert (np.diff(seq[step.chunks[first_chunk[by_col]]]) < 0).all()


@settings(max_examples=100, deadline=None)
@given(streams(), geometries(), st.booleans(), st.integers(1, 200), st.integers(1, 5), st.booleans())
def test_schedule_scores_every_chunk_once(toks, geo, stateless, batch_tokens, batch_lanes, pack):
    if isinstance(geo, Doc) and not (toks == BOS).any():
        return
    plan = geo.plan(toks)
    sched = build_schedule(plan, stateless=stateless, batch_tokens=batch_tokens, batch_lanes=batch_lanes, pack=pack)
    chunks = np.concatenate([s.chunks for s in sched.steps]) if sched.steps else np.zeros(0, int)
    assert sorted(chunks.tolist()) == list(range(len(plan)))
    assert sorted(sched.seq.tolist()) == list(range(len(plan)))
    assert sorted(i for g in sched.groups for i in g) == list(range(len(sched.steps)))
    for s in sched.steps:
        # a row scores exactly the targets of its chunks, from the context of its first chunk
        targets = np.concatenate([np.arange(a, z) for a, z in zip(s.start, s.stop)])
        assert targets.tolist() == np.concatenate([np.arange(plan.start[c], plan.stop[c]) for c in s.chunks]).tolist()
        if not stateless:
            assert len(s.chunks) == len(s.ctx)  # one chunk per row: update between a lane's chunks
        if not plan.pad:
            assert len(set((s.stop - 1 - s.ctx).tolist())) == 1
        assert (s.pack_row is not None) == (pack and stateless and plan.pad)
        if s.pack_row is not None:
            check_packing(plan, s, batch_tokens, sched.seq)
    for world in (1, 2, 3):
        owned = sorted(g for r in range(world) for g in sched.groups_of_rank(r, world))
        assert owned == list(range(len(sched.groups)))
    if not stateless:  # a lane's chunks are scored in stream order
        for lane in np.unique(plan.lane):
            mine = np.flatnonzero(plan.lane == lane)
            assert (np.diff(sched.seq[mine]) > 0).all()


class Recorder:
    """A predictor that checks what it is shown and answers a uniform distribution."""

    def __init__(self, toks, doc_mode, stateless=True):
        self.toks, self.doc_mode, self.stateless = torch.as_tensor(toks), doc_mode, stateless
        self.updates = []

    def log_probs(self, batch):
        for b in range(batch.inputs.shape[0]):
            n, c = int(batch.lengths[b]), int(batch.context_start[b])
            assert torch.equal(batch.inputs[b, :n], self.toks[c:c + n])
            assert (batch.inputs[b, n:] == 0).all()
            if self.doc_mode:  # a BOS can only open a row: context never crosses a document
                assert not (batch.inputs[b, 1:n] == BOS).any()
        assert torch.equal(batch.positions, batch.context_start[batch.rows] + batch.cols + 1)
        assert (batch.cols < batch.lengths[batch.rows]).all()
        if batch.packed is not None:  # the same rows side by side, each piece start marked
            p = batch.packed
            starts = torch.zeros_like(p.starts)
            for b in range(batch.inputs.shape[0]):
                n, r, o = int(batch.lengths[b]), int(p.row[b]), int(p.offset[b])
                assert torch.equal(p.inputs[r, o:o + n], batch.inputs[b, :n])
                starts[r, o] = True
            assert torch.equal(starts, p.starts)
            assert torch.equal(p.inputs[p.row[batch.rows], p.offset[batch.rows] + batch.cols],
                               self.toks[batch.positions - 1])
        return torch.full((batch.num_scored, V), -float(np.log(V)))

    def update(self, scored):
        assert torch.equal(scored.targets, self.toks[scored.batch.positions])
        self.updates.append(scored.batch.positions.clone())


@settings(max_examples=80, deadline=None)
@given(streams(), geometries(), st.booleans(), st.integers(1, 120), st.booleans())
def test_engine_scores_every_target_once(toks, geo, stateless, batch_tokens, pack):
    if isinstance(geo, Doc) and not (toks == BOS).any():
        return
    pred = Recorder(toks, isinstance(geo, Doc), stateless)
    res = evaluate_geometry(geo, pred, toks, byte_counts=np.ones(len(toks), np.int64), batch_tokens=batch_tokens,
                            batch_lanes=3, pack_rows=pack, record=True)
    m = max(len(toks) - 1, 0)
    assert res.score.tokens == m and res.score.bytes == m
    assert (res.record.count[1:] == 1).all() and res.record.count[:1].sum() == 0
    assert res.score.nll == pytest.approx(m * np.log(V), rel=1e-6)
    updated = torch.cat(pred.updates).sort().values if pred.updates else torch.zeros(0, dtype=torch.int64)
    assert updated.tolist() == list(range(1, m + 1))


def test_sliding_with_stride_equal_window_is_flat():
    for m in (1, 5, 64, 65, 200):
        a, b = Flat(16).plan(np.zeros(m + 1)), Sliding(16, 16).plan(np.zeros(m + 1))
        assert all((getattr(a, k) == getattr(b, k)).all() for k in ("start", "stop", "ctx"))


def test_sliding_tail_shorter_than_stride():
    plan = Sliding(8, 3).plan(np.zeros(15))  # 14 targets: windows at 0, 3, 6 (6 + 8 = 14: the end)
    assert plan.start.tolist() == [1, 9, 12] and plan.stop.tolist() == [9, 12, 15]
    assert plan.ctx.tolist() == [0, 3, 6]
    short = Sliding(8, 3).plan(np.zeros(5))  # shorter than one window
    assert (short.start.tolist(), short.stop.tolist(), short.ctx.tolist()) == ([1], [5], [0])


def test_doc_chunks_match_the_record():
    """A document of P predictions: chunks e_j = min((j+1)C, P), window start max(0, e_j - W)."""
    toks = np.array([BOS] + [5] * 9 + [BOS] + [6] * 3)  # documents of 10 and 3 predictions (+ none)
    plan = Doc(4, 6).plan(toks)
    assert plan.start.tolist() == [1, 5, 9, 11] and plan.stop.tolist() == [5, 9, 11, 14]
    assert plan.ctx.tolist() == [0, 2, 4, 10] and plan.lane.tolist() == [0, 0, 0, 1]
    lead = Doc(4, 6).plan(np.array([3, 4, BOS, 5]))  # tokens before the first BOS: a document too
    assert lead.start.tolist() == [1, 3] and lead.ctx.tolist() == [0, 2]


@pytest.mark.parametrize("mode,kw,match", [
    ("sliding", dict(window=8, stride=9, chunk=1), "eval.stride=9 must not exceed eval.window=8"),
    ("doc", dict(window=8, stride=1, chunk=9), "eval.chunk=9 must not exceed eval.window=8"),
    ("flat", dict(window=0, stride=1, chunk=1), "eval.window must be a positive integer, got 0"),
    ("sliding", dict(window=8, stride=0, chunk=1), "eval.stride must be a positive integer"),
    ("doc", dict(window=8, stride=1, chunk=-2), "eval.chunk must be a positive integer"),
    ("ring", dict(window=8, stride=1, chunk=1), "unknown eval mode 'ring'; modes: flat, sliding, doc"),
])
def test_bad_geometry_parameters(mode, kw, match):
    with pytest.raises(GeometryError, match=match):
        make_geometry(mode, **kw)


def test_doc_mode_without_bos():
    with pytest.raises(GeometryError, match=r"eval mode doc needs documents that start with BOS \(id 1\)"):
        Doc(4, 8).plan(np.full(20, 7))
