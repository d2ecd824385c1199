"""``pgolf.eval.audit``: the legal paths pass, and each known illegal pattern, written as a mutant
predictor (or scoring order), fails with the rule it breaks named.

The mutants sit on a cheap bigram model (logits looked up from the last input token) so that the
audit's reruns stay fast; the real GPT is audited in every mode as well.
"""
import numpy as np
import pytest
import torch

from pgolf.config import ModelConfig
from pgolf.eval.audit import audit, pick_positions
from pgolf.eval.geometry import Doc, Flat, Plan, Sliding
from pgolf.eval.predictor import PlainModel
from pgolf.model.gpt import GPT

V, BOS = 40, 1
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stream():
    gen = np.random.default_rng(1)
    parts = [np.concatenate([[BOS], gen.integers(2, V, gen.integers(5, 60))]) for _ in range(10)]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


@pytest.fixture(scope="module")
def sidecar(stream):
    return np.ones(len(stream), dtype=np.int64)


TABLE = torch.randn(V, V, generator=torch.Generator().manual_seed(0))


class Bigram:
    """Legal and stateless: ``log_softmax(TABLE[last input token])``."""

    stateless = True

    def logits(self, batch):
        return TABLE[batch.inputs[batch.rows, batch.cols]]

    def log_probs(self, batch):
        return self.logits(batch).log_softmax(-1)

    def update(self, scored):
        pass


class Cache(Bigram):
    """Legal and adaptive: a unigram cache of the targets already scored, mixed into the logits."""

    stateless = False

    def __init__(self):
        self.counts = torch.zeros(V)

    def log_probs(self, batch):
        return (self.logits(batch) + 0.3 * self.counts.clamp(max=5)).log_softmax(-1)

    def update(self, scored):
        self.counts += torch.bincount(scored.targets, minlength=V).float()


def _row_counts(batch):
    """Token counts of each row's whole context: the chunk's own tokens, targets included."""
    rows = torch.zeros(batch.inputs.shape[0], V)
    for b in range(len(rows)):
        rows[b] = torch.bincount(batch.inputs[b, :int(batch.lengths[b])], minlength=V).float()
    return rows


class TrainThenScore(Cache):
    """#301: adapts on the chunk (its tokens are in the context) before producing its distribution."""

    def log_probs(self, batch):
        self.counts += _row_counts(batch).sum(0)
        return super().log_probs(batch)


class LastEpoch(Cache):
    """#605: several epochs over the chunk, keeping the last epoch's scores."""

    def log_probs(self, batch):
        for _ in range(3):
            lp = super().log_probs(batch)
            self.counts += _row_counts(batch).sum(0)
        return lp


class TargetKeyedCache(Bigram):
    """A hashed n-gram cache whose key includes the target (visible as the next context token)."""

    def log_probs(self, batch):
        logits = self.logits(batch).clone()
        nxt = batch.cols + 1
        seen = nxt < batch.lengths[batch.rows]
        keyed = batch.inputs[batch.rows[seen], nxt[seen]]
        logits[torch.nonzero(seen).flatten(), keyed] += 3.0
        return logits.log_softmax(-1)


class LooksAhead(Bigram):
    """Mixes in the token one past the target."""

    def log_probs(self, batch):
        logits = self.logits(batch).clone()
        ahead = batch.cols + 2
        seen = ahead < batch.lengths[batch.rows]
        logits[torch.nonzero(seen).flatten()] += TABLE[batch.inputs[batch.rows[seen], ahead[seen]]]
        return logits.log_softmax(-1)


class ScaledNLL(Bigram):
    """NLL multiplied by 0.98 after the fact."""

    def log_probs(self, batch):
        return 0.98 * super().log_probs(batch)


class PostHocTemperature(Bigram):
    """A temperature applied to the log-probabilities without renormalising."""

    def log_probs(self, batch):
        return super().log_probs(batch) / 1.3


def two_passes(geometry):
    """A scoring order that adapts on a first pass and scores everything again (the rescoring pass)."""
    def plan(tokens):
        p = geometry.plan(tokens)
        twice = {k: np.concatenate([getattr(p, k)] * 2) for k in ("start", "stop", "ctx")}
        return Plan(p.name + "+rescore", lane=np.concatenate([p.lane, p.lane + p.lane.max() + 1]), pad=p.pad, **twice)
    return plan


GEOMETRY = Doc(8, 24, BOS)


@pytest.mark.parametrize("make", [Bigram, Cache])
@pytest.mark.parametrize("geometry", [GEOMETRY, Flat(16), Sliding(16, 4)])
def test_legal_paths_pass(stream, sidecar, make, geometry):
    report = audit(make, stream, None, geometry, byte_counts=sidecar, batch_lanes=4)
    assert report.passed, report.table()
    assert [c.rule for c in report.checks] == ["single_pass", "normalisation", "causality", "no_peeking",
                                               "score_before_update"]


@pytest.mark.parametrize("make,rules", [
    (TrainThenScore, {"causality", "no_peeking", "score_before_update"}),
    (LastEpoch, {"causality", "no_peeking", "score_before_update"}),
    (TargetKeyedCache, {"no_peeking"}),
    (LooksAhead, {"causality"}),
    (ScaledNLL, {"normalisation"}),
    (PostHocTemperature, {"normalisation"}),
])
def test_illegal_predictors_fail_naming_the_rule(stream, sidecar, make, rules):
    report = audit(make, stream, None, GEOMETRY, byte_counts=sidecar, batch_lanes=4)
    assert set(report.failed()) == rules, report.table()
    assert "ILLEGAL" in report.table() and all(f"{r:<20} FAIL" in report.table() for r in rules)


def test_second_rescoring_pass_fails_single_pass(stream, sidecar):
    report = audit(Cache, stream, None, two_passes(GEOMETRY), byte_counts=sidecar, batch_lanes=4)
    assert "single_pass" in report.failed(), report.table()
    assert "scored 2 times" in next(c.detail for c in report.checks if c.rule == "single_pass")


def test_positions_cover_document_edges(stream):
    picked = pick_positions(stream, BOS, 6, seed=0)
    bos = torch.nonzero(stream == BOS).flatten().tolist()
    assert any(p + 1 in bos for p in picked) and any(p - 1 in bos for p in picked)
    assert all(stream[p] != BOS and p >= 1 for p in picked)


@pytest.mark.parametrize("geometry", [GEOMETRY, Flat(16), Sliding(16, 4)])
def test_the_plain_model_passes_in_every_mode(stream, sidecar, geometry):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=V, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    report = audit(lambda: PlainModel(model, CPU), stream, None, geometry, byte_counts=sidecar, num_positions=4,
                   batch_tokens=96)
    assert report.passed, report.table()
    assert '"passed": true' in report.to_json()
