"""The engine with a real (tiny) model: flat reproduces the previous evaluation exactly, the modes
agree where they should, and bad predictors, sidecars and budgets are handled."""
import re

import numpy as np
import pytest
import torch

from pgolf.config import ModelConfig
from pgolf.data.tokenizer import ByteTable
from pgolf.eval.engine import PredictorError, evaluate_geometry, schedule_of
from pgolf.eval.flat import evaluate
from pgolf.eval.geometry import Doc, Flat, Sliding
from pgolf.eval.predictor import PlainModel, Predictor
from pgolf.eval.scoring import score_stream
from pgolf.model.gpt import GPT

V, BOS, CPU = 48, 1, torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=V, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def stream():
    """Documents of 3..70 tokens (some longer than the windows below), BOS-separated."""
    gen = np.random.default_rng(0)
    parts = [np.concatenate([[BOS], gen.integers(2, V, gen.integers(3, 70))]) for _ in range(14)]
    return torch.from_numpy(np.concatenate(parts)[:-5].astype(np.int64))  # the last document cut short


@pytest.fixture(scope="module")
def table():
    gen = torch.Generator().manual_seed(3)
    boundary = torch.zeros(V, dtype=torch.bool)
    boundary[:2] = True
    return ByteTable(torch.randint(0, 4, (V,), generator=gen).to(torch.int16),
                     torch.rand(V, generator=gen) < 0.4, boundary)


def per_token(model, x):
    """NLL of every target of the 1-D ``x`` from one forward over it (float64, [len(x) - 1])."""
    with torch.inference_mode():
        return model.token_nll(x[None, :-1], x[None, 1:])[0].double()


def test_flat_reproduces_the_previous_evaluation_exactly(model, stream, table):
    """The old ``evaluate`` was ``score_stream`` over ``model.token_nll``: same bits."""
    for seq_len, batch in ((32, 3), (50, 2), (1000, 1)):
        old = score_stream(model.token_nll, stream, seq_len=seq_len, batch_seqs=batch, table=table)
        new = evaluate(model, stream, table, seq_len=seq_len, batch_tokens=batch * seq_len, device=CPU)
        assert (new.nll, new.tokens, new.bytes) == (old.nll, old.tokens, old.bytes)
        assert new.bpb == old.bpb


def test_sliding_equals_one_forward_per_window(model, stream, table):
    w, s = 24, 7
    m = len(stream) - 1
    nll, seen, prev_end = 0.0, 0, 0
    for ws in range(0, m, s):  # windows [ws, min(ws + w, m)); each scores what lies past the last one
        end = min(ws + w, m)
        nll += float(per_token(model, stream[ws:end + 1])[prev_end - ws:].sum())
        seen += end - prev_end
        prev_end = end
        if end == m:
            break
    got = evaluate_geometry(Sliding(w, s), PlainModel(model, CPU), stream, table, batch_tokens=96).score
    assert got.tokens == seen == m
    assert got.nll == pytest.approx(nll, rel=1e-6)
    assert got.nll != pytest.approx(evaluate_geometry(Flat(w), PlainModel(model, CPU), stream, table).score.nll,
                                    rel=1e-6)


def _documents(stream):
    starts = torch.nonzero(stream == BOS).flatten().tolist() + [len(stream) - 1]
    return [stream[a:b + 1] for a, b in zip(starts[:-1], starts[1:])]


def test_doc_with_long_window_is_per_document_scoring(model, stream, table):
    docs = _documents(stream)
    want = sum(float(per_token(model, d).sum()) for d in docs)
    longest = max(len(d) for d in docs)
    for chunk in (5, 48):
        got = evaluate_geometry(Doc(chunk, longest, BOS), PlainModel(model, CPU), stream, table,
                                batch_tokens=200).score
        assert got.tokens == len(stream) - 1
        assert got.nll == pytest.approx(want, rel=1e-6)


class Adaptive(PlainModel):
    """The plain model declared adaptive: one chunk per row, ``update`` between a document's chunks."""

    stateless = False


@pytest.mark.parametrize("predictor", [PlainModel, Adaptive])
def test_doc_equals_one_forward_per_chunk(model, stream, table, predictor):
    """The record's geometry: chunk j of a document predicted from its tokens [max(0, e_j - W), e_j)."""
    c, w = 6, 20
    want = 0.0
    for d in _documents(stream):
        p = len(d) - 1
        for j in range(-(-p // c)):
            e = min((j + 1) * c, p)
            lo = max(0, e - w)
            want += float(per_token(model, d[lo:e + 1])[j * c - lo:].sum())
    got = evaluate_geometry(Doc(c, w, BOS), predictor(model, CPU), stream, table, batch_tokens=64, batch_lanes=3)
    assert got.score.nll == pytest.approx(want, rel=1e-6)
    assert got.score.tokens == len(stream) - 1


def test_sequence_numbers_follow_engine_order(model, stream, table):
    res = evaluate_geometry(Doc(6, 20, BOS), Adaptive(model, CPU), stream, table, batch_lanes=4, record=True)
    rec = res.record
    assert rec.seq[0] == -1 and (rec.seq[1:] >= 0).all()
    doc_of_target = np.cumsum(stream.numpy() == BOS)[:-1]  # the next BOS is a document's last target
    for d in np.unique(doc_of_target):  # a document's chunks come in stream order
        pos = np.flatnonzero(doc_of_target == d) + 1
        assert (np.diff(rec.seq[pos]) >= 0).all()
    assert set(np.unique(rec.seq[1:])) == set(range(res.chunks))


def test_per_token_output(model, stream, table, tmp_path):
    res = evaluate_geometry(Sliding(16, 4), PlainModel(model, CPU), stream, table, record=True)
    out = tmp_path / "tokens.tsv"
    res.record.write(str(out), stream)
    lines = out.read_text().splitlines()
    assert lines[0] == "position\ttarget\tnll\tbytes\tseq" and len(lines) == len(stream)
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(1, len(stream)))
    assert [int(r[1]) for r in rows] == stream[1:].tolist()
    assert sum(float(r[2]) for r in rows) == pytest.approx(res.score.nll, rel=1e-7)
    assert sum(int(r[3]) for r in rows) == res.score.bytes


def test_batching_does_not_change_the_score(model, stream, table):
    scores = [evaluate_geometry(Doc(6, 20, BOS), PlainModel(model, CPU), stream, table, batch_tokens=b).score
              for b in (1, 40, 10_000)]
    assert len({(s.tokens, s.bytes) for s in scores}) == 1
    assert scores[0].nll == pytest.approx(scores[2].nll, rel=1e-6)


class Broken:
    stateless = True

    def __init__(self, fn):
        self.fn = fn

    def log_probs(self, batch):
        return self.fn(batch)

    def update(self, scored):
        pass


@pytest.mark.parametrize("fn,match", [
    (lambda b: torch.zeros(b.num_scored + 1, V), r"Broken.log_probs returned \(\d+, 48\); expected a float tensor"),
    (lambda b: torch.zeros(b.num_scored), "expected a float tensor"),
    (lambda b: torch.zeros(b.num_scored, V, dtype=torch.int64), "expected a float tensor"),
    (lambda b: torch.full((b.num_scored, V), float("nan")), "non-finite values at stream positions"),
    (lambda b: torch.full((b.num_scored, V), float("inf")), "non-finite values at stream positions"),
    (lambda b: torch.zeros(b.num_scored, 3), r"returned 3 columns, but the stream holds token id \d+"),
])
def test_bad_predictor_output_is_named(stream, table, fn, match):
    assert isinstance(Broken(fn), Predictor)
    with pytest.raises(PredictorError, match=match):
        evaluate_geometry(Flat(16), Broken(fn), stream, table)


def test_byte_sidecar_length_checked(model, stream):
    with pytest.raises(ValueError, match=f"byte_counts has {len(stream) - 1} entries but the token stream has "
                                         f"{len(stream)}"):
        evaluate_geometry(Flat(16), PlainModel(model, CPU), stream, byte_counts=np.ones(len(stream) - 1))
    sidecar = evaluate_geometry(Flat(16), PlainModel(model, CPU), stream, byte_counts=np.full(len(stream), 2))
    assert sidecar.score.bytes == 2 * (len(stream) - 1)


class Counting(PlainModel):
    stateless = False
    calls = 0

    def log_probs(self, batch):
        self.calls += 1
        return super().log_probs(batch)


def test_time_budget_falls_back_to_the_plain_model(model, stream, table):
    ticks = iter(range(10**6))
    clock = lambda: float(next(ticks))  # noqa: E731  every clock read is one second later
    main, plain = Counting(model, CPU), PlainModel(model, CPU)
    free = evaluate_geometry(Doc(6, 20, BOS), Counting(model, CPU), stream, table, batch_lanes=4)
    res = evaluate_geometry(Doc(6, 20, BOS), main, stream, table, batch_lanes=4, max_seconds=7.5, fallback=plain,
                            clock=clock, record=True)
    # A step reads the clock three times (2 s): after 3 steps 6 s are spent and 6 + 2 > 7.5.
    assert main.calls == 3 and res.steps > 3
    steps = schedule_of(Doc(6, 20, BOS), stream, main, batch_tokens=65536, batch_lanes=4).steps
    assert res.fallback_tokens == sum(int((s.stop - s.start).sum()) for s in steps[3:]) > 0
    assert res.score.tokens == len(stream) - 1 and (res.record.count[1:] == 1).all()
    assert res.score.nll == pytest.approx(free.score.nll, rel=1e-6)
    with pytest.raises(ValueError, match="needs a fallback predictor"):
        evaluate_geometry(Flat(16), main, stream, table, max_seconds=1.0)


def test_slots_are_summed_in_slot_order_whatever_the_order_of_adding():
    """Why totals do not depend on the number of ranks: each step has its own slot, and the slots
    are added in step order (a running sum would give 1.0 below when slot 2 is added first)."""
    from pgolf.eval.scoring import BpbAccumulator

    values = {0: 1e16, 1: 1.0, 2: -1e16}  # (1e16 + 1) - 1e16 == 0 in float64; -1e16 + 1e16 + 1 == 1
    results = []
    for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):
        acc = BpbAccumulator(slots=3)
        for slot in order:
            one = torch.ones(1, dtype=torch.int64)
            acc.add(torch.tensor([values[slot]], dtype=torch.float64), one, one, one, slot=slot)
        acc.all_reduce()
        results.append(acc.result().nll)
    assert results == [0.0, 0.0, 0.0]


def test_a_person_at_a_terminal_sees_the_scoring_progress(model, stream, table, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    monkeypatch.delenv("CI", raising=False)
    res = evaluate_geometry(Doc(8, 32, BOS), PlainModel(model, CPU), stream, table, batch_tokens=64,
                            show_progress=True)
    bar = capsys.readouterr().err
    assert re.search(rf"eval doc: 100%.* {res.steps}(\.0)?/{res.steps}(\.0)? ", bar), bar
    evaluate_geometry(Doc(8, 32, BOS), PlainModel(model, CPU), stream, table, batch_tokens=64)
    assert capsys.readouterr().err == ""  # off unless asked (the audit's many reruns draw nothing)
