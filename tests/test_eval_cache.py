"""``pgolf.eval.cache``: the neural cache as a predictor of the evaluation engine.

A tiny random GPT scores a random stream of documents; the cache must (a) equal the plain model
bit for bit while empty or with ``lam = 0``, (b) mix exactly the kernel's cache distribution over
the keys of scored chunks only, (c) pass the audit in every geometry, while a target-keyed hashed
cache (the illegal n-gram caches) fails it on normalisation and no-peeking, (d) reject bad input
before anything is scored.
"""
import math

import numpy as np
import pytest
import torch

from pgolf.config import ConfigError, ModelConfig, RunConfig
from pgolf.eval.audit import audit
from pgolf.eval.cache import CacheError, NeuralCache
from pgolf.eval.engine import evaluate_geometry
from pgolf.eval.geometry import Doc, Flat, Sliding
from pgolf.eval.modes import predictor_for
from pgolf.eval.predictor import PlainModel
from pgolf.model.gpt import GPT
from triton_kernels.neural_cache import cache_log_probs_reference

V, BOS = 48, 1
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=V, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1,
                           tied_embed_init_std=0.1)).eval()


@pytest.fixture(scope="module")
def stream():
    gen = np.random.default_rng(3)
    motif = gen.integers(2, V, 6)  # repeated so the cache has something to find
    parts = [np.concatenate([[BOS], motif, gen.integers(2, V, gen.integers(4, 30)), motif]) for _ in range(6)]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


def ones(stream):
    return np.ones(len(stream), np.int64)


def cache(model, **kw):
    kw = {"theta": 0.5, "lam": 0.3, "similarity": "dot", **kw}
    return NeuralCache(PlainModel(model, CPU), V, **kw)


def run(predictor, stream, geometry, **kw):
    return evaluate_geometry(geometry, predictor, stream, byte_counts=ones(stream), record=True, batch_lanes=3, **kw)


GEOMETRIES = [Flat(16), Sliding(16, 8), Doc(8, 16, BOS)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: g.name)
def test_lam_zero_and_empty_cache_equal_the_plain_model_bitwise(model, stream, geometry):
    plain = run(PlainModel(model, CPU), stream, geometry).record.nll
    assert np.array_equal(run(cache(model, lam=0.0), stream, geometry).record.nll, plain, equal_nan=True)
    c = cache(model)
    first = run(c, stream, Flat(len(stream)))  # one chunk: scored before any key exists
    whole = run(PlainModel(model, CPU), stream, Flat(len(stream))).record.nll
    assert np.array_equal(first.record.nll, whole, equal_nan=True)
    assert len(c) == len(stream) - 1  # ... and inserted afterwards


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: g.name)
def test_cache_changes_scores_after_the_first_step_only(model, stream, geometry):
    """The first step (one chunk; in doc geometry the first chunks of ``batch_lanes=3`` documents)
    sees an empty cache; every later position has keys and its score moves."""
    plain = run(PlainModel(model, CPU), stream, geometry).record
    got = run(cache(model), stream, geometry).record
    first = got.seq < (3 if geometry.name == "doc" else 1)
    assert np.array_equal(got.nll[first], plain.nll[first], equal_nan=True)
    later = ~first & (got.count > 0)
    assert np.abs(got.nll[later] - plain.nll[later]).min() > 0


def test_mixture_equals_the_reference_over_earlier_keys(model, stream):
    """Flat windows of 16: the chunk ``k`` is mixed with the cache of chunks ``< k`` (the last
    ``window`` positions), computed here from the reference lookup."""
    window, theta, lam = 20, 0.5, 0.3
    got = run(cache(model, window=window), stream, Flat(16)).record
    m = len(stream) - 1
    want = np.zeros(m + 1)
    for start in range(0, m, 16):
        hs = torch.cat([model.hidden_states(stream[None, s:min(s + 16, m)])[0] for s in range(0, start + 1, 16)])
        hs = hs.detach()
        q = hs[start:start + 16]
        lp = model.logits_from_hidden(q).float().log_softmax(-1).detach()
        tgt = stream[start + 1:start + 1 + len(q)]
        if start:
            keys, labels = hs[max(0, start - window):start], stream[max(1, start - window + 1):start + 1]
            lc = cache_log_probs_reference(q, keys, labels, vocab_size=V, theta=theta).log_p
            lp = torch.logaddexp(math.log(1 - lam) + lp, math.log(lam) + lc)
        want[start + 1:start + 1 + len(q)] = -lp.gather(1, tgt[:, None]).squeeze(1).double().numpy()
    np.testing.assert_allclose(got.nll[1:], want[1:], rtol=1e-5, atol=1e-5)


def test_per_doc_cache_sees_only_its_document(model, stream):
    """Per document: every document's first chunk is the plain model's; across documents it is not."""
    doc = Doc(8, 16, BOS)
    plain = run(PlainModel(model, CPU), stream, doc).record
    per_doc = run(cache(model, per_doc=True), stream, doc).record
    starts = np.flatnonzero(stream.numpy() == BOS)
    firsts = np.concatenate([np.arange(s + 1, s + 9) for s in starts])
    firsts = firsts[firsts < len(stream)]
    assert np.array_equal(per_doc.nll[firsts], plain.nll[firsts], equal_nan=True)
    shared = run(cache(model, per_doc=False), stream, doc).record
    assert not np.array_equal(shared.nll[firsts], plain.nll[firsts], equal_nan=True)


def test_window_keeps_the_last_positions(model, stream):
    c = cache(model, window=5)
    run(c, stream, Flat(16))
    assert len(c) == 5
    assert torch.equal(c.labels[-1], stream[-5:])


def test_entropy_lam_is_bounded_by_lam_and_rows_stay_normalised(model, stream):
    c = cache(model, lam_rule="entropy", lam=0.9)
    res = evaluate_geometry(Flat(16), c, stream, byte_counts=ones(stream), capture=range(17, 40))
    for lp in res.captured.values():
        assert abs(float(torch.logsumexp(lp, 0))) < 1e-5
    plain = run(PlainModel(model, CPU), stream, Flat(16)).record.nll
    fixed = run(cache(model, lam=0.9), stream, Flat(16)).record.nll
    ent = run(cache(model, lam_rule="entropy", lam=0.9), stream, Flat(16)).record.nll
    later = slice(17, None)
    assert not np.array_equal(ent[later], fixed[later]) and not np.array_equal(ent[later], plain[later])
    # lam_t = lam * H(p) / log V: lam for a uniform row, 0 for a certain one, in between otherwise
    rows = torch.stack([torch.zeros(V), torch.full((V,), -1e4).index_fill(0, torch.tensor([3]), 0.0),
                        torch.linspace(0, 6, V)]).log_softmax(-1)
    entropy = -(rows.double().exp() * rows.double()).sum(-1)
    lam_t = c._lam(rows)
    np.testing.assert_allclose(lam_t.double().numpy(), (0.9 * entropy / math.log(V)).numpy(), rtol=1e-5, atol=1e-7)
    assert float(lam_t[0]) == pytest.approx(0.9) and float(lam_t[1]) == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < float(lam_t[2]) < 0.9


@pytest.mark.parametrize("mode,geometry", [("flat+cache", Flat(16)), ("sliding+cache", Sliding(16, 8)),
                                           ("cache", Doc(8, 16, BOS))])
def test_audit_passes_in_every_geometry(model, stream, mode, geometry):
    cfg = RunConfig()
    cfg.model.vocab_size = V
    cfg.set("cache.theta", 0.5)
    cfg.set("cache.lam", 0.3)
    report = audit(lambda: predictor_for(cfg, mode, model, CPU), stream, None, geometry, byte_counts=ones(stream),
                   bos_id=BOS, num_positions=4, num_normalisation=12, batch_lanes=3)
    assert report.passed, report.table()


class HashedTargetCache:
    """The illegal n-gram caches: counts keyed on (previous token, target); the count-based boost
    goes to the target only (read from the next input), and the row is not renormalised."""

    stateless = False

    def __init__(self, model):
        self.inner, self.counts = PlainModel(model, CPU), torch.zeros(V, V)

    def log_probs(self, batch):
        lp = self.inner.log_probs(batch).clone()
        nxt = batch.cols + 1
        seen = nxt < batch.lengths[batch.rows]
        prev = batch.inputs[batch.rows, batch.cols]
        tgt = batch.inputs[batch.rows, nxt.clamp(max=batch.inputs.shape[1] - 1)]
        boost = torch.log(0.5 * (self.counts[prev, tgt] + 1) / (self.counts[prev].sum(1) + 1))
        i = torch.nonzero(seen).squeeze(1)
        lp[i, tgt[i]] = torch.logaddexp(lp[i, tgt[i]], boost[i])
        return lp

    def update(self, scored):
        b = scored.batch
        self.counts.index_put_((b.inputs[b.rows, b.cols], scored.targets), torch.ones(len(b.rows)), accumulate=True)


def test_target_keyed_hashed_cache_fails_normalisation_and_no_peeking(model, stream):
    report = audit(lambda: HashedTargetCache(model), stream, None, Doc(8, 16, BOS), byte_counts=ones(stream),
                   bos_id=BOS, num_positions=4, num_normalisation=12, batch_lanes=3)
    assert {"normalisation", "no_peeking"} <= set(report.failed()), report.table()


def test_composes_on_any_predictor_with_hidden_states(model, stream):
    """The seam for TTT: a wrapper that only forwards ``log_probs_and_hidden`` and counts updates
    gets cached like the plain model and still sees each update, after the cache's insertion."""

    class Adapting(PlainModel):
        stateless = False

        def __init__(self, *a):
            super().__init__(*a)
            self.seen = []

        def update(self, scored):
            self.seen.append(len(outer))

    inner = Adapting(model, CPU)
    outer = NeuralCache(inner, V, theta=0.5, lam=0.3)
    got = run(outer, stream, Doc(8, 16, BOS)).record.nll
    assert inner.seen[0] > 0 and inner.seen == sorted(inner.seen)
    assert np.array_equal(got, run(cache(model), stream, Doc(8, 16, BOS)).record.nll, equal_nan=True)
    with pytest.raises(CacheError, match="hidden states"):
        NeuralCache(HashedTargetCache(model), V, theta=0.5, lam=0.3)


@pytest.mark.parametrize("kw,match", [({"theta": 0.0}, "theta"), ({"theta": math.inf}, "theta"),
                                      ({"lam": 1.0}, "lam"), ({"lam": -0.1}, "lam"), ({"window": -1}, "window"),
                                      ({"lam_rule": "target"}, "lam_rule"), ({"similarity": "l2"}, "similarity")])
def test_bad_parameters_are_refused(model, kw, match):
    with pytest.raises(CacheError, match=match):
        cache(model, **kw)


@pytest.mark.parametrize("key,value", [("cache.theta", "-1"), ("cache.lam", "1"), ("cache.window", "-2"),
                                       ("cache.similarity", "l2"), ("cache.lam_rule", "oracle"),
                                       ("eval.mode", "flat+doc"), ("eval.mode", "cache+nope")])
def test_bad_config_is_refused_naming_the_key(key, value):
    cfg = RunConfig()
    cfg.set(key, value)
    with pytest.raises(ConfigError, match=key.split(".")[0]):
        cfg.validate()


def test_bad_insertions_are_refused(model):
    c = cache(model)
    h = torch.randn(4, 32)
    with pytest.raises(CacheError, match="labels"):
        c.insert(h, torch.tensor([1, 2, 3]), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(CacheError, match="vocab_size"):
        c.insert(h, torch.tensor([1, 2, 3, V]), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(CacheError, match="non-finite"):
        c.insert(h.index_fill(0, torch.tensor([2]), math.nan), torch.tensor([1, 2, 3, 4]),
                 torch.zeros(4, dtype=torch.int64))
    assert len(c) == 0


def test_non_finite_hidden_states_fail_before_any_score(model, stream):
    class Poisoned(PlainModel):
        def log_probs_and_hidden(self, batch):
            lp, h = super().log_probs_and_hidden(batch)
            return lp, h.clone().fill_(math.inf)

    c = NeuralCache(Poisoned(model, CPU), V, theta=0.5, lam=0.3)
    with pytest.raises(CacheError, match="non-finite hidden states at stream positions"):
        evaluate_geometry(Flat(16), c, stream, byte_counts=ones(stream))
    assert len(c) == 0
