"""Packed rows (``eval.pack_rows``): several documents' chunks in one forward row behind a document
mask score exactly what one row per context scores, every target once, and the audit passes the
packed plain model and fails the packing mistakes (a mask that lets a piece see its neighbours, a
gather one or two columns off: it sees its target, or the token after it).

Tolerances, float32 on a CPU: a packed row computes the same sums as the unpacked rows in other
GEMM/attention shapes, so scores agree to rounding (measured: < 5e-6 on hidden states and NLL),
asserted at 2e-5 nats; changing the mask, RoPE positions or the smear at a piece start moves them
by > 1e-2.
"""
import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config import ModelConfig
from pgolf.eval.audit import audit
from pgolf.eval.engine import evaluate_geometry, schedule_of
from pgolf.eval.geometry import Doc
from pgolf.eval.predictor import PlainModel
from pgolf.model import documents
from pgolf.model.gpt import GPT

BOS, V = 1, 61
TOL = 2e-5
SHAPE = dict(vocab_size=V, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2, gate_window=12)
# Every record feature that reads more than one position (smear, attention with XSA and the gate,
# partial RoPE, document attention with segments), and the baseline without document attention.
MODELS = {
    "record": dict(rope_dims=4, xsa_last_n=2, smear_gate=True, attn_gate=True, skip_gates=True,
                   num_loops=1, loop_start=1, loop_end=2, parallel_start_layer=2, doc_attention=True,
                   max_segment=7, qk_gain_init=5.0, mlp_activation="leaky_relu2", ln_scale=True),
    "baseline": {},
}
CPU = torch.device("cpu")


@functools.cache
def model(name: str, layout: str = "fp32") -> GPT:
    """A tiny GPT with every parameter random (zero-initialised gates and projections included)."""
    net = GPT(ModelConfig(**SHAPE, **MODELS[name], dtype_layout=layout))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in net.named_parameters():
            base = 1.0 if any(k in n for k in ("scale", "q_gain", "skip_weights", "lambdas")) else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return net.place(CPU).eval()


def stream_of(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Documents ``[BOS] + tokens`` of the given numbers of tokens after the BOS."""
    gen = np.random.default_rng(seed)
    parts = [np.concatenate([[BOS], gen.integers(2, V, n)]) for n in lengths]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


def per_token(name: str, toks: torch.Tensor, geo: Doc, *, pack: bool, batch_tokens: int = 4096) -> np.ndarray:
    res = evaluate_geometry(geo, PlainModel(model(name), CPU), toks, byte_counts=np.ones(len(toks), np.int64),
                            batch_tokens=batch_tokens, pack_rows=pack, record=True)
    assert (res.record.count[1:] == 1).all()
    return res.record.nll[1:]


def pieces(toks, starts_at, n):
    """A packed row of the stream slices ``toks[a:a+n]`` and its piece starts."""
    row = torch.cat([toks[a:a + k] for a, k in zip(starts_at, n)])[None]
    starts = torch.zeros_like(row, dtype=torch.bool)
    starts[0, np.cumsum([0] + n[:-1])] = True
    return row, starts


@pytest.mark.parametrize("name", list(MODELS))
def test_pieces_compute_as_rows_of_their_own(name):
    """A piece's hidden states do not depend on its neighbours in the row: pieces that start with
    and without a BOS, with a BOS inside, of one token, far into the row."""
    toks = stream_of([40, 6, 0, 12, 90], seed=3)
    toks[70] = BOS  # inside a piece
    at, n = [0, 45, 3, 62, 90], [41, 1, 9, 30, 60]
    row, starts = pieces(toks, at, n)
    net = model(name)
    with torch.no_grad():
        together = net.hidden_states(row, starts)[0]
        alone = [net.hidden_states(toks[None, a:a + k])[0] for a, k in zip(at, n)]
        without_starts = net.hidden_states(row)[0]
    assert (together - torch.cat(alone)).abs().max() < TOL
    assert (without_starts - torch.cat(alone)).abs().max() > 1e-2  # the starts matter: the test can fail


def test_piece_starts_restart_the_positions():
    """Under the official dtype layout RoPE positions are bf16 (rounded above 256), so only
    positions restarted at each piece keep a piece far into the row equal to the piece alone (to
    bf16 noise: a right-padded batch row differs from the row alone by as much, 0.0625)."""
    net = model("baseline", "official")
    toks = stream_of([300, 40], seed=4)
    row, starts = pieces(toks, [0, 301], [301, 41])
    with torch.no_grad():
        alone = net.hidden_states(toks[None, 301:])[0]
        packed = net.hidden_states(row, starts)[0, 301:]
        spans = documents.document_spans(row, bos_id=None, max_segment=0, varlen=False, starts=starts)
        assert spans.positions[0, 301:].tolist() == list(range(41))
        row_positions = documents.DocumentSpans(mask=spans.mask)  # RoPE at the index within the row
        net._document_spans = lambda ids, piece_starts: row_positions
        shifted = net.hidden_states(row, starts)[0, 301:]
        del net._document_spans
    assert (packed - alone).abs().max() <= 0.125
    assert (shifted - alone).abs().max() > 1.0


@st.composite
def layouts(draw):
    """Document lengths (many short ones, some longer than the window), a window and a chunk."""
    window = draw(st.integers(4, 24))
    short = st.integers(0, 6)
    lengths = draw(st.lists(st.one_of(short, short, st.integers(0, 3 * window)), min_size=1, max_size=14))
    return lengths, window, draw(st.integers(1, window)), draw(st.integers(1, 3 * window))


@settings(max_examples=25, deadline=None)
@given(layouts(), st.sampled_from(list(MODELS)), st.integers(0, 2**16))
def test_packed_scores_equal_unpacked(layout, name, seed):
    lengths, window, chunk, batch_tokens = layout
    toks = stream_of(lengths, seed)
    geo = Doc(chunk, window, BOS)
    unpacked = per_token(name, toks, geo, pack=False, batch_tokens=batch_tokens)
    packed = per_token(name, toks, geo, pack=True, batch_tokens=batch_tokens)
    assert np.abs(packed - unpacked).max(initial=0.0) < TOL


def test_packing_fills_rows_and_keeps_scores():
    """Many short documents and documents longer than the window: fewer, fuller forward rows, the
    same per-token scores."""
    toks = stream_of([3, 50, 1, 7, 0, 2, 33, 5, 9, 4, 70, 6, 2, 1, 8], seed=9)
    geo = Doc(4, 16, BOS)
    plain = PlainModel(model("record"), CPU)
    loose = schedule_of(geo, toks, plain, batch_tokens=4096, batch_lanes=1)
    tight = schedule_of(geo, toks, plain, batch_tokens=4096, batch_lanes=1, pack_rows=True)
    real = sum(int(s.lengths.sum()) for s in loose.steps)
    waste = [sum(s.padded_tokens for s in sched.steps) - real for sched in (loose, tight)]
    assert waste[1] * 4 < waste[0]  # measured: 5 padding tokens packed, 133 not
    assert sum(s.forward_rows for s in tight.steps) < sum(s.forward_rows for s in loose.steps)
    assert max(np.bincount(s.pack_row).max() for s in tight.steps) >= 3  # several pieces in one row
    assert all(s.width <= 16 for s in tight.steps)
    np.testing.assert_allclose(per_token("record", toks, geo, pack=True, batch_tokens=64),
                               per_token("record", toks, geo, pack=False, batch_tokens=64), rtol=0, atol=TOL)


class CrossDocument(PlainModel):
    """Runs the packed rows without their piece starts: a plain causal mask over the whole row."""

    def log_probs(self, batch):
        p = batch.packed
        with torch.inference_mode():
            h = self.model.hidden_states(p.inputs)[p.row[batch.rows], p.offset[batch.rows] + batch.cols]
            return self.model.logits_from_hidden(h).log_softmax(-1)


class ColumnsAhead(PlainModel):
    """Reads each scored position's hidden state ``ahead`` columns too far right: one column has
    seen its target, two the token after it."""

    ahead = 1

    def log_probs(self, batch):
        p = batch.packed
        with torch.inference_mode():
            h = self.model.hidden_states(p.inputs, p.starts)
            cols = (p.offset[batch.rows] + batch.cols + self.ahead).clamp(max=h.shape[1] - 1)
            return self.model.logits_from_hidden(h[p.row[batch.rows], cols]).log_softmax(-1)


class TwoColumnsAhead(ColumnsAhead):
    ahead = 2


def _audit(predictor, toks, geo, **kw):
    return audit(lambda: predictor(model("baseline"), CPU), toks, None, geo, byte_counts=np.ones(len(toks), np.int64),
                 bos_id=BOS, batch_tokens=64, pack_rows=True, **kw)


AUDIT_STREAM = [3, 25, 1, 7, 0, 2, 14, 5, 9, 4, 30, 6, 2]


def test_audit_passes_the_packed_plain_model():
    toks = stream_of(AUDIT_STREAM, seed=2)
    for name in MODELS:
        report = audit(lambda: PlainModel(model(name), CPU), toks, None, Doc(4, 16, BOS),
                       byte_counts=np.ones(len(toks), np.int64), bos_id=BOS, batch_tokens=64, pack_rows=True)
        assert report.passed, report.table()


def test_audit_fails_a_mask_that_crosses_pieces():
    """The changed position sits in the first piece of a forward row with others after it: the
    later pieces, numbered before it, see it."""
    toks = stream_of(AUDIT_STREAM, seed=2)
    geo = Doc(4, 16, BOS)
    sched = schedule_of(geo, toks, PlainModel(model("baseline"), CPU), batch_tokens=64, batch_lanes=1, pack_rows=True)
    step = next(s for s in sched.steps if (s.pack_row == 0).sum() >= 2)
    first = np.flatnonzero((step.pack_row == 0) & (step.pack_offset == 0))[0]
    p = int(step.ctx[first]) + 1  # a token of the first piece, never a BOS (it opens the piece)
    report = _audit(CrossDocument, toks, geo, positions=[p])
    assert report.failed() == ["causality"], report.table()
    assert "scored before it" in next(c.detail for c in report.checks if c.rule == "causality")
    assert not _audit(CrossDocument, toks, geo).passed  # the audit's own choice of positions finds it too


@pytest.mark.parametrize("mutant,broken", [(ColumnsAhead, {"no_peeking"}),
                                           (TwoColumnsAhead, {"causality", "no_peeking"})])
def test_audit_fails_a_gather_ahead(mutant, broken):
    toks = stream_of(AUDIT_STREAM, seed=2)
    report = _audit(mutant, toks, Doc(4, 16, BOS))
    assert set(report.failed()) == broken, report.table()
