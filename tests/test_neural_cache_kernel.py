"""triton_kernels.neural_cache: the streaming Triton lookup against the torch reference (CPU interpreter;
bf16 on a GPU only), the causal rule, the full-vocabulary path, the mixture, and bad inputs."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import triton_kernels.neural_cache as nc
from triton_kernels._dispatch import interpreter_enabled
from triton_kernels.neural_cache.ops import cache_lookup_triton, cache_tiles

DEV = "cuda" if torch.cuda.is_available() and not interpreter_enabled() else "cpu"
NEG_INF = float("-inf")


def _make(Q=7, N=37, d=24, V=11, dtype=torch.float32, seed=0, seq=False, seq_range=5):
    g = torch.Generator().manual_seed(seed)
    out = dict(queries=torch.randn(Q, d, generator=g).to(DEV, dtype), keys=torch.randn(N, d, generator=g).to(DEV, dtype),
               labels=torch.randint(0, V, (N,), generator=g).to(DEV), targets=torch.randint(0, V, (Q,), generator=g).to(DEV))
    if seq:
        out["key_seq"] = torch.randint(0, seq_range, (N,), generator=g).to(DEV)
        out["query_seq"] = torch.randint(0, seq_range + 1, (Q,), generator=g).to(DEV)
    return out


def _oracle(inp, **kw):
    """The reference in float64 on the inputs' exact values."""
    wide = {k: (v.double() if v.is_floating_point() else v) for k, v in inp.items()}
    return nc.cache_lookup_reference(**wide, **kw)


def _assert_close(got, want, atol, rtol=0.0):
    """Same counts, same -inf pattern, finite values within tolerance, no NaN anywhere."""
    assert torch.equal(got.count.cpu(), want.count.cpu().to(torch.int32))
    for name in ("log_p", "log_den"):
        g, w = getattr(got, name).double().cpu(), getattr(want, name).double().cpu()
        assert g.dtype == w.dtype and not torch.isnan(g).any(), name
        assert torch.equal(torch.isneginf(g), torch.isneginf(w)), f"{name}: -inf pattern differs\n{g}\n{w}"
        fin = torch.isfinite(w)
        assert torch.isfinite(g[fin]).all(), name
        torch.testing.assert_close(g[fin], w[fin], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("Q,N,d", [(7, 37, 24), (1, 1, 16), (33, 130, 40), (65, 200, 17)])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("seq", [False, True])
def test_triton_fp32_matches_reference(Q, N, d, similarity, seq):
    inp = _make(Q, N, d, seq=seq, seed=Q + N)
    got = nc.cache_target_logprob(**inp, theta=0.7, vocab_size=11, similarity=similarity, impl="triton")
    assert got.log_p.shape == (Q,) and got.log_p.dtype == torch.float32 and got.count.dtype == torch.int32
    _assert_close(got, _oracle(inp, theta=0.7, similarity=similarity), atol=2e-5, rtol=1e-5)
    if seq:
        assert 0 < int((got.count == 0).sum()) < Q or Q == 1, "the case should mix empty and non-empty caches"


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_triton_fp16_keys_accumulate_in_fp32(similarity):
    inp = _make(19, 150, 48, dtype=torch.float16, seq=True, seed=3)
    got = nc.cache_target_logprob(**inp, theta=0.5, vocab_size=11, similarity=similarity, impl="triton")
    # the oracle sees the same fp16 values: only the accumulation order differs
    _assert_close(got, _oracle(inp, theta=0.5, similarity=similarity), atol=2e-4, rtol=1e-4)


def test_torch_path_is_the_reference_in_fp32():
    inp = _make(9, 50, 20, seq=True)
    got = nc.cache_target_logprob(**inp, theta=1.3, vocab_size=11, impl="torch")
    _assert_close(got, _oracle(inp, theta=1.3), atol=2e-5, rtol=1e-5)
    wide = nc.cache_target_logprob(**{k: v.double() if v.is_floating_point() else v for k, v in inp.items()},
                                   theta=1.3, vocab_size=11)
    # impl="auto" keeps float64 states on the torch path: the kernel's float32 scores would miss by ~1e-7
    assert wide.log_p.dtype == wide.log_den.dtype == torch.float64
    _assert_close(wide, _oracle(inp, theta=1.3), atol=1e-12)


@pytest.mark.parametrize("splits", [1, 2, 3, 5, 100])
def test_key_splits_combine_to_the_same_result(splits):
    inp = _make(21, 300, 24, seq=True, seed=splits)
    got = cache_lookup_triton(**inp, theta=0.9, similarity="cosine", splits=splits)
    _assert_close(got, _oracle(inp, theta=0.9, similarity="cosine"), atol=2e-5, rtol=1e-5)


def test_launcher_rejects_what_the_kernel_cannot_take():
    inp = _make(5, 20, 16, seq=True)
    with pytest.raises(ValueError, match="go together"):
        cache_lookup_triton(**dict(inp, query_seq=None), theta=1.0)
    with pytest.raises(ValueError, match="unit stride"):
        cache_lookup_triton(**dict(inp, keys=inp["keys"].T.contiguous().T), theta=1.0)
    with pytest.raises(ValueError, match="share one dtype"):
        cache_lookup_triton(**dict(inp, keys=inp["keys"].half()), theta=1.0)
    with pytest.raises(ValueError, match="int32 or int64"):
        cache_lookup_triton(**dict(inp, labels=inp["labels"].short()), theta=1.0)


def test_tiles_split_the_keys_when_queries_are_few():
    t = cache_tiles(2048, 1 << 20, 512, torch.bfloat16, sm_count=132)
    assert t["splits"] * -(-2048 // t["BQ"]) >= 2 * 132  # about two waves of programs
    assert t["keys_per_split"] % t["BN"] == 0 and t["splits"] * t["keys_per_split"] >= 1 << 20
    assert (t["splits"] - 1) * t["keys_per_split"] < 1 << 20  # no empty split
    small = cache_tiles(2048, 2048, 512, torch.bfloat16, sm_count=132)
    assert small["keys_per_split"] >= 4 * small["BN"]  # a split never gets fewer than 4 key blocks
    assert cache_tiles(7, 37, 24, torch.float32, sm_count=1)["splits"] == 1
    assert cache_tiles(0, 0, 24, torch.float32, sm_count=132)["splits"] == 1


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_empty_cache_gives_minus_inf_and_count_zero(impl):
    inp = _make(5, 0, 24)
    got = nc.cache_target_logprob(**inp, theta=1.0, vocab_size=11, impl=impl)
    assert torch.isneginf(got.log_p).all() and torch.isneginf(got.log_den).all() and (got.count == 0).all()
    hidden = _make(5, 30, 24, seq=True)
    hidden["key_seq"].fill_(3)
    hidden["query_seq"].fill_(3)  # equal sequence numbers: nothing visible (the rule is strict)
    got = nc.cache_target_logprob(**hidden, theta=1.0, vocab_size=11, impl=impl)
    assert torch.isneginf(got.log_p).all() and torch.isneginf(got.log_den).all() and (got.count == 0).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_all_labels_equal_and_no_label_matching(impl):
    inp = _make(6, 40, 16, seed=5)
    inp["labels"].fill_(4)
    inp["targets"] = torch.tensor([4, 0, 4, 10, 4, 1], device=DEV)
    got = nc.cache_target_logprob(**inp, theta=2.0, vocab_size=11, impl=impl)
    hit = inp["targets"] == 4
    assert torch.allclose(got.log_p[hit], torch.zeros(3, device=DEV), atol=1e-6)  # p_cache(4) = 1
    assert torch.isneginf(got.log_p[~hit]).all() and torch.isfinite(got.log_den).all()
    assert (got.count == 40).all()


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_tiny_theta_is_the_label_frequency(similarity):
    inp = _make(8, 90, 24, seq=True, seed=2)
    got = nc.cache_target_logprob(**inp, theta=1e-3, vocab_size=11, similarity=similarity, impl="triton")
    vis = inp["key_seq"][None, :] < inp["query_seq"][:, None]
    match = (inp["labels"][None, :] == inp["targets"][:, None]) & vis
    freq = torch.log(match.sum(1).double() / vis.sum(1).double())
    seen = vis.any(1) & match.any(1)
    torch.testing.assert_close(got.log_p[seen].double(), freq[seen], atol=0.05, rtol=0)


@pytest.mark.parametrize("theta", [1e-3, 1e3])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_extreme_theta_stays_finite_and_accurate(theta, similarity):
    inp = _make(13, 70, 24, seq=True, seed=7)
    got = nc.cache_target_logprob(**inp, theta=theta, vocab_size=11, similarity=similarity, impl="triton")
    want = _oracle(inp, theta=theta, similarity=similarity)
    # theta = 1e3: scores ~ 1e3-1e4, fp32 rounding of each score is ~1e-3 of its magnitude's ulp
    _assert_close(got, want, atol=2e-5 if theta < 1 else 5e-3, rtol=1e-5)
    if theta > 1:  # the numerator keeps its own maximum: far-below-best targets are finite, not -inf
        far = torch.isfinite(want.log_p) & (want.log_p < -120)
        assert far.any() and torch.isfinite(got.log_p[far]).all()


def test_scores_are_theta_times_the_similarity():
    inp = _make(5, 9, 24, seed=12)
    q, k = inp["queries"].double() * 1e-3, inp["keys"].double() * 1e-2  # norms well below 1
    torch.testing.assert_close(nc.scores_reference(q, k, theta=2.5), 2.5 * q @ k.T)
    cos = torch.nn.functional.cosine_similarity(q[:, None, :], k[None, :, :], dim=-1)
    torch.testing.assert_close(nc.scores_reference(q, k, theta=2.5, similarity="cosine"), 2.5 * cos)


def test_cosine_ignores_norms_and_survives_zero_vectors():
    inp = _make(7, 37, 24, seed=11)
    base = nc.cache_target_logprob(**inp, theta=3.0, vocab_size=11, similarity="cosine", impl="triton")
    # norms far from 1 on both sides (a clamp of the norm at the wrong eps would show)
    scaled = dict(inp, queries=inp["queries"] * 1e-3, keys=inp["keys"] * torch.rand(37, 1, device=DEV).add(0.5) * 1e-2)
    again = nc.cache_target_logprob(**scaled, theta=3.0, vocab_size=11, similarity="cosine", impl="triton")
    _assert_close(again, base, atol=2e-5, rtol=1e-5)
    inp["keys"][3] = 0.0
    inp["queries"][2] = 0.0
    got = nc.cache_target_logprob(**inp, theta=3.0, vocab_size=11, similarity="cosine", impl="triton")
    _assert_close(got, _oracle(inp, theta=3.0, similarity="cosine"), atol=2e-5, rtol=1e-5)


def test_dot_and_cosine_differ():
    inp = _make(7, 37, 24, seed=1)
    dot = nc.cache_target_logprob(**inp, theta=0.5, vocab_size=11, similarity="dot", impl="triton")
    cos = nc.cache_target_logprob(**inp, theta=0.5, vocab_size=11, similarity="cosine", impl="triton")
    assert (dot.log_den - cos.log_den).abs().max() > 0.1


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 80), q=st.integers(1, 20), seq_range=st.integers(1, 6))
def test_visibility_rule_is_key_seq_below_query_seq(seed, n, q, seq_range):
    """Each query's result equals the lookup over exactly its visible keys, and invisible keys can be
    anything (here: replaced by huge keys carrying the target) without changing it."""
    inp = _make(q, n, 16, seq=True, seed=seed, seq_range=seq_range)
    got = nc.cache_target_logprob(**inp, theta=0.8, vocab_size=11, impl="triton")
    for i in range(q):
        vis = inp["key_seq"] < inp["query_seq"][i]
        one = nc.cache_lookup_reference(inp["queries"][i:i + 1].double(), inp["keys"][vis].double(),
                                        inp["labels"][vis], inp["targets"][i:i + 1], theta=0.8)
        _assert_close(nc.CacheLookup(got.log_p[i:i + 1], got.log_den[i:i + 1], got.count[i:i + 1]), one,
                      atol=2e-5, rtol=1e-5)
    future = inp["key_seq"][None, :] >= inp["query_seq"][:, None]  # [Q, N]
    if future.all(0).any():  # keys no query sees: poison them
        poison = future.all(0)
        moved = dict(inp, keys=inp["keys"].clone(), labels=inp["labels"].clone())
        moved["keys"][poison] = 1e3
        moved["labels"][poison] = inp["targets"][0]
        again = nc.cache_target_logprob(**moved, theta=0.8, vocab_size=11, impl="triton")
        _assert_close(again, got, atol=0, rtol=0)


def test_int32_indices_and_strided_inputs():
    inp = _make(9, 45, 24, seq=True, seed=4)
    want = nc.cache_target_logprob(**inp, theta=0.6, vocab_size=11, impl="triton")
    narrow = {k: (v.int() if not v.is_floating_point() else v) for k, v in inp.items()}
    _assert_close(nc.cache_target_logprob(**narrow, theta=0.6, vocab_size=11, impl="triton"), want, atol=0)
    wide_keys = torch.zeros(45, 48, device=DEV)
    wide_keys[:, ::2] = inp["keys"]  # a strided view, copied by the public function
    strided = dict(inp, keys=wide_keys[:, ::2])
    _assert_close(nc.cache_target_logprob(**strided, theta=0.6, vocab_size=11, impl="triton"), want, atol=0)
    rows = torch.zeros(18, 24, device=DEV)
    rows[::2] = inp["queries"]
    _assert_close(nc.cache_target_logprob(**dict(inp, queries=rows[::2]), theta=0.6, vocab_size=11, impl="triton"),
                  want, atol=0)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_full_vocab_path_is_normalised_and_gathers_to_the_target_path(similarity):
    inp = _make(12, 60, 24, V=13, seq=True, seed=9)
    targets = inp.pop("targets")
    full = nc.cache_log_probs(**inp, theta=0.9, vocab_size=13, similarity=similarity)
    assert full.log_p.shape == (12, 13) and full.log_p.dtype == torch.float32
    seen = full.count > 0
    assert 0 < int(seen.sum()) < 12
    torch.testing.assert_close(torch.logsumexp(full.log_p[seen].double(), 1), torch.zeros(int(seen.sum()),
                               dtype=torch.float64, device=DEV), atol=1e-5, rtol=0)
    assert torch.isneginf(full.log_p[~seen]).all() and not torch.isnan(full.log_p).any()
    vis = inp["key_seq"][None, :] < inp["query_seq"][:, None]
    present = torch.zeros(12, 13, dtype=torch.long, device=DEV).scatter_add(
        1, inp["labels"][None, :].expand(12, -1), vis.long()) > 0  # labels some visible key carries
    assert torch.equal(torch.isfinite(full.log_p), present)
    streamed = nc.cache_target_logprob(**inp, targets=targets, theta=0.9, vocab_size=13, similarity=similarity,
                                       impl="triton")
    gathered = nc.CacheLookup(full.log_p.gather(1, targets[:, None])[:, 0], full.log_den, full.count)
    _assert_close(gathered, streamed, atol=2e-5, rtol=1e-5)


def test_full_vocab_path_chunks_and_extreme_theta():
    inp = _make(6, 50, 24, V=7, seed=13)
    inp.pop("targets")
    one = nc.cache_log_probs(**inp, theta=1e3, vocab_size=7, similarity="cosine", chunk=1 << 20)
    chunked = nc.cache_log_probs(**inp, theta=1e3, vocab_size=7, similarity="cosine", chunk=7)
    fin = torch.isfinite(one.log_p)
    assert torch.equal(fin, torch.isfinite(chunked.log_p)) and (one.log_p[fin] < -50).any()
    torch.testing.assert_close(one.log_p[fin], chunked.log_p[fin], atol=2e-3, rtol=1e-5)


def test_mixture_is_normalised_and_exact_on_an_empty_cache():
    g = torch.Generator().manual_seed(0)
    Q, V = 6, 13
    log_p_model = torch.log_softmax(torch.randn(Q, V, generator=g, dtype=torch.float64), 1)
    inp = {k: v.double() if v.is_floating_point() else v for k, v in _make(Q, 40, 16, V=V, seq=True, seed=2).items()}
    inp["query_seq"][::3] = 0  # these queries see no key
    inp.pop("targets")
    cache = nc.cache_log_probs(**inp, theta=1.5, vocab_size=V)
    assert (cache.count == 0).any() and (cache.count > 0).any()
    lam = torch.linspace(0.0, 0.9, Q, dtype=torch.float64)
    mixed = nc.mix_log_probs(log_p_model, cache.log_p.double(), lam=lam, count=cache.count)
    torch.testing.assert_close(torch.logsumexp(mixed, 1), torch.zeros(Q, dtype=torch.float64), atol=1e-12, rtol=0)
    empty = cache.count == 0
    assert torch.equal(mixed[empty], log_p_model[empty])  # exactly p_model
    direct = torch.log((1 - lam[:, None]) * log_p_model.exp() + lam[:, None] * cache.log_p.double().exp())
    torch.testing.assert_close(mixed[~empty], direct[~empty], atol=1e-12, rtol=0)
    targets = torch.randint(0, V, (Q,), generator=g)
    at_target = nc.mix_log_probs(log_p_model.gather(1, targets[:, None])[:, 0],
                                 cache.log_p.double().gather(1, targets[:, None])[:, 0], lam=lam, count=cache.count)
    torch.testing.assert_close(at_target, mixed.gather(1, targets[:, None])[:, 0], atol=0, rtol=0)
    assert torch.equal(nc.mix_log_probs(log_p_model, cache.log_p.double(), lam=0.0, count=cache.count), log_p_model)


def test_custom_op_passes_opcheck():
    inp = _make(5, 70, 16, seq=True)
    args = (inp["queries"], inp["keys"], inp["labels"], inp["targets"], inp["key_seq"], inp["query_seq"], 0.5, "dot")
    torch.library.opcheck(torch.ops.triton_kernels.neural_cache_lookup, args)


def _never(*a, **k):
    raise AssertionError("work started before the inputs were checked")


@pytest.mark.parametrize("change,message", [
    (dict(labels=torch.zeros(36, dtype=torch.long)), "labels has 36 entries but keys has 37"),
    (dict(targets=torch.zeros(6, dtype=torch.long)), "targets has 6 entries but queries has 7"),
    (dict(labels=torch.full((37,), 11)), r"labels must lie in \[0, vocab_size=11\)"),
    (dict(labels=torch.full((37,), -1)), r"labels must lie in \[0, vocab_size=11\)"),
    (dict(targets=torch.full((7,), 11)), r"targets must lie in \[0, vocab_size=11\)"),
    (dict(theta=0.0), "theta must be a finite number > 0"),
    (dict(theta=-1.0), "theta must be a finite number > 0"),
    (dict(theta=float("nan")), "theta must be a finite number > 0"),
    (dict(theta=float("inf")), "theta must be a finite number > 0"),
    (dict(theta=True), "theta must be a finite number > 0"),
    (dict(queries=torch.full((7, 24), float("nan"))), "queries hold a non-finite value"),
    (dict(keys=torch.full((37, 24), float("inf"))), "keys hold a non-finite value"),
    (dict(keys=torch.randn(37, 20)), "same non-zero hidden size"),
    (dict(keys=torch.randn(37, 24).half()), "share a dtype"),
    (dict(labels=torch.zeros(37)), "labels must be a 1-D int32 or int64 tensor"),
    (dict(targets=torch.zeros(7, dtype=torch.uint8)), "targets must be a 1-D int32 or int64 tensor"),
    (dict(key_seq=torch.zeros(37, dtype=torch.long)), "key_seq and query_seq go together"),
    (dict(key_seq=torch.zeros(36, dtype=torch.long), query_seq=torch.zeros(7, dtype=torch.long)),
     "key_seq has 36 entries but keys has 37"),
    (dict(key_seq=torch.full((37,), 2**31), query_seq=torch.zeros(7, dtype=torch.long)),
     "key_seq must lie in the int32 range"),
    (dict(key_seq=torch.zeros(37, dtype=torch.long), query_seq=torch.full((7,), -(2**31) - 1)),
     "query_seq must lie in the int32 range"),
    (dict(similarity="euclid"), "similarity must be one of"),
    (dict(vocab_size=0), "vocab_size must be a positive int"),
])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_bad_inputs_raise_before_any_work(monkeypatch, change, message, impl):
    monkeypatch.setattr(nc, "cache_lookup_op", _never)
    monkeypatch.setattr(nc, "cache_lookup_reference", _never)
    monkeypatch.setattr(nc, "cache_log_probs_reference", _never)
    kw = dict(_make(), theta=1.0, vocab_size=11)
    kw.update({k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in change.items()})
    with pytest.raises(ValueError, match=message):
        nc.cache_target_logprob(**kw, impl=impl)
    if "targets" not in change:
        kw.pop("targets")
        with pytest.raises(ValueError, match=message):
            nc.cache_log_probs(**kw)


def test_other_bad_inputs():
    kw = dict(_make(), theta=1.0, vocab_size=11)
    with pytest.raises(ValueError, match="impl='triton' supports"):
        nc.cache_target_logprob(**{k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                   for k, v in kw.items()}, impl="triton")
    with pytest.raises(ValueError, match="impl must be"):
        nc.cache_target_logprob(**kw, impl="cuda")
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        nc.cache_log_probs(**{k: v for k, v in kw.items() if k != "targets"}, chunk=0)
    # values are only checked when asked: validate=False skips the host synchronisation
    bad = dict(kw, queries=torch.full((7, 24), float("nan"), device=DEV))
    assert torch.isnan(nc.cache_target_logprob(**bad, validate=False, impl="torch").log_den).all()


@pytest.mark.parametrize("lam,message", [
    (1.0, r"lam must lie in \[0, 1\)"), (-0.1, r"lam must lie in \[0, 1\)"), (float("nan"), r"\[0, 1\)"),
    (torch.tensor([0.1, 1.0, 0.2]), r"lam must lie in \[0, 1\)"), (torch.tensor([0.1, float("nan"), 0.2]), r"\[0, 1\)"),
    (torch.tensor([0.1, 0.2]), "lam must be a float, a 0-d tensor or a"),
])
def test_bad_lam_raises(lam, message):
    lp = torch.log_softmax(torch.randn(3, 5), 1)
    with pytest.raises(ValueError, match=message):
        nc.mix_log_probs(lp, lp, lam=lam, count=torch.ones(3, dtype=torch.int32))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or interpreter_enabled(),
                                reason="needs a CUDA GPU with TRITON_INTERPRET=0")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("Q,N,d", [(7, 37, 24), (300, 5000, 512), (2048, 40_000, 512)])
def test_gpu_bf16_matches_reference(similarity, Q, N, d):
    inp = _make(Q, N, d, dtype=torch.bfloat16, seq=True, seq_range=50, seed=1)
    got = nc.cache_target_logprob(**inp, theta=4.0 if similarity == "cosine" else 0.1, vocab_size=11,
                                  similarity=similarity)
    want = _oracle(inp, theta=4.0 if similarity == "cosine" else 0.1, similarity=similarity)
    _assert_close(got, want, atol=2e-3, rtol=1e-3)


def test_triton_path_compiles_with_fullgraph():
    inp = _make(5, 70, 16, seq=True)

    def lookup(queries, keys, labels, targets, key_seq, query_seq):
        out = nc.cache_target_logprob(queries, keys, labels, targets, key_seq=key_seq, query_seq=query_seq,
                                      theta=0.5, vocab_size=11, validate=False, impl="triton")
        return out.log_p, out.log_den, out.count

    compiled = torch.compile(lookup, backend="aot_eager", fullgraph=True)
    got = nc.CacheLookup(*compiled(**inp))
    _assert_close(got, _oracle(inp, theta=0.5), atol=2e-5, rtol=1e-5)
