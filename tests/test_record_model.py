"""The record stack's model features (RECORD_STACK.md section B), each against an independent
reference written from the spec, plus causality, document isolation, packing, the loop switch under
torch.compile, the record's initialisation and the `record` preset's parameter count."""
import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig, load_config
from pgolf.model import smear as smear_module
from pgolf.model.gpt import GPT

BOS = 1
# float64 throughout; the model computes RoPE angles in fp32 (as the record does), the reference in
# float64, which alone moves logits by ~2e-7. Every feature moves them by > 1e-3.
TOL = dict(rtol=2e-6, atol=2e-6)
# Tiny shape shared by the feature tests: 5 layers, head dim 8, GQA 4 -> 2.
TINY = dict(vocab_size=61, num_layers=5, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2, gate_window=12)
FEATURES = {
    "leaky_relu2": dict(mlp_activation="leaky_relu2"),
    "partial_rope": dict(rope_dims=4),
    "ln_scale": dict(ln_scale=True),
    "xsa": dict(xsa_last_n=2),
    "smear_gate": dict(smear_gate=True),
    "attn_gate": dict(attn_gate=True, attn_gate_scale=0.5),
    "skip_gates": dict(skip_gates=True),
    "loop": dict(num_loops=2, loop_start=1, loop_end=2),
    "parallel": dict(parallel_start_layer=3),
    "loop_parallel": dict(num_loops=1, loop_start=1, loop_end=2, parallel_start_layer=3),
    "doc_attention": dict(doc_attention=True),
    "doc_attention_segments": dict(doc_attention=True, max_segment=5),
    "untied_head": dict(tie_embeddings=False),
    "all": dict(mlp_activation="leaky_relu2", rope_dims=4, ln_scale=True, xsa_last_n=5, smear_gate=True,
                attn_gate=True, attn_gate_scale=0.5, skip_gates=True, num_loops=2, loop_start=1, loop_end=2,
                parallel_start_layer=3, doc_attention=True, max_segment=7, qk_gain_init=5.0),
}


def randomise(model: GPT, seed: int = 0) -> dict[str, torch.Tensor]:
    """Give every parameter (zero-initialised gates included) random non-trivial values; return
    the state dict in float64."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.5 if name in ("tok_emb.weight",) else 0.3
            base = 1.0 if any(k in name for k in ("scale", "q_gain", "skip_weights", "lambdas")) else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=g))
    model.double()
    return {k: v.double() for k, v in model.state_dict().items()}


def spec_segments(ids: torch.Tensor, max_segment: int) -> torch.Tensor:
    """Segment number of every position, walking the row: a new one at each BOS and every
    ``max_segment`` tokens after the current document's BOS."""
    out = torch.zeros_like(ids)
    for b in range(ids.size(0)):
        seg, doc_start = 0, 0
        for t in range(ids.size(1)):
            if t > 0 and ids[b, t] == BOS:
                seg, doc_start = seg + 1, t
            elif t > 0 and max_segment and (t - doc_start) % max_segment == 0:
                seg += 1
            out[b, t] = seg
    return out


def spec_logits(sd: dict[str, torch.Tensor], cfg: ModelConfig, ids: torch.Tensor, *, looped: bool = True) -> torch.Tensor:
    """Logits of RECORD_STACK.md section B (B.1-B.9), float64, written from the spec text."""
    B, T = ids.shape
    D, H, Hk = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
    hd = D // H
    eps = torch.finfo(torch.float64).eps

    def rn(t):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + eps)

    sig = torch.sigmoid
    e = sd["tok_emb.weight"][ids]  # B.1
    if cfg.smear_gate:
        w, lam = sd["smear.weight"][0], sd["smear.lam"][0]
        rows = []
        for b in range(B):
            out = [e[b, 0]]
            for t in range(1, T):
                g = lam * sig(w @ e[b, t, : cfg.gate_window])
                out.append(e[b, t] + g * e[b, t - 1] * float(ids[b, t] != BOS))
            rows.append(torch.stack(out))
        e = torch.stack(rows)
    x0 = rn(e)

    r = cfg.rope_dims or hd  # B.2.3: theta_{t,j} = t * base^(-j/(r/2)), a = x[0:r/2], b = x[r/2:r]
    j = torch.arange(r // 2, dtype=torch.float64)
    theta = torch.arange(T, dtype=torch.float64)[:, None] * cfg.rope_base ** (-j / (r // 2))
    cos, sin = theta.cos(), theta.sin()

    def rope(t):  # [B, T, heads, hd]
        a, b_, rest = t[..., : r // 2], t[..., r // 2: r], t[..., r:]
        c, s = cos[None, :, None], sin[None, :, None]
        return torch.cat((a * c + b_ * s, -a * s + b_ * c, rest), -1)

    if cfg.doc_attention:
        seg = spec_segments(ids, cfg.max_segment)
        allowed = (seg[:, :, None] == seg[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    else:
        allowed = torch.ones(B, T, T, dtype=torch.bool).tril()

    def attention(l, n):  # B.2, n = the normalised (LN-scaled) block input
        p = f"blocks.{l}.attn."
        q = (n @ sd[p + "c_q.weight"].T).view(B, T, H, hd)
        k = (n @ sd[p + "c_k.weight"].T).view(B, T, Hk, hd)
        v = (n @ sd[p + "c_v.weight"].T).view(B, T, Hk, hd)
        q, k = rope(rn(q)), rope(rn(k))
        q = q * sd[p + "q_gain"][None, None, :, None]
        heads = []
        for h in range(H):
            g = h // (H // Hk)
            s = torch.einsum("btd,bsd->bts", q[:, :, h], k[:, :, g]) / math.sqrt(hd)
            y = s.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, :, g]  # [B, T, hd]
            if l >= cfg.num_layers - cfg.xsa_last_n:  # B.2.6
                vh = v[:, :, g] / v[:, :, g].norm(dim=-1, keepdim=True)
                y = y - (y * vh).sum(-1, keepdim=True) * vh
            if cfg.attn_gate:  # B.2.7
                y = y * sig(cfg.attn_gate_scale * (n[..., : cfg.gate_window] @ sd[p + "attn_gate_w"][h]))[..., None]
            heads.append(y)
        return torch.cat(heads, -1) @ sd[p + "proj.weight"].T

    def mlp(l, n):  # B.3
        u = n @ sd[f"blocks.{l}.mlp.fc.weight"].T
        phi = torch.maximum(u, 0.5 * u) if cfg.mlp_activation == "leaky_relu2" else torch.clamp(u, min=0)
        return phi.square() @ sd[f"blocks.{l}.mlp.proj.weight"].T

    def c(l):  # B.4 LN scale by physical layer
        return 1 / math.sqrt(l + 1) if cfg.ln_scale else 1.0

    def block(l, x):  # B.4: the mix replaces the stream
        p = f"blocks.{l}."
        x_in = sd[p + "resid_mix"][0] * x + sd[p + "resid_mix"][1] * x0
        x_out = x_in + sd[p + "attn_scale"] * attention(l, rn(x_in) * c(l))
        return x_out + sd[p + "mlp_scale"] * mlp(l, rn(x_out) * c(l))

    order = list(range(cfg.num_layers))  # B.5
    if cfg.num_loops and looped:
        order = (list(range(cfg.loop_start)) + list(range(cfg.loop_start, cfg.loop_end + 1)) * (cfg.num_loops + 1)
                 + list(range(cfg.loop_end + 1, cfg.num_layers)))
    enc, dec = order[: len(order) // 2], order[len(order) // 2:]

    def merge(jj, x, s):  # B.6
        ws = sd["skip_weights"][jj] * s
        if cfg.skip_gates:
            g = sig(sd["skip_gates"][jj])
            return g * x + (1 - g) * ws
        return x + ws

    x, stack, lane0, lane1 = x0, [], None, None
    for l in enc:
        x = block(l, x)
        stack.append(x)
    for jj, l in enumerate(dec):
        if cfg.parallel_start_layer and l >= cfg.parallel_start_layer:  # B.7
            if lane0 is None:
                lane0 = lane1 = x
            if stack:
                lane0 = merge(jj, lane0, stack.pop())
            p = f"blocks.{l}."
            mix = sd[p + "resid_mix"]
            a = sd[p + "attn_scale"] * attention(l, rn(mix[0] * lane0 + mix[1] * x0) * c(l))
            m = sd[p + "mlp_scale"] * mlp(l, rn(lane1) * c(l))
            rho, pi = sd["parallel_resid_lambdas"][l], sd["parallel_post_lambdas"][l]
            lane0, lane1 = (rho[0] * lane0 + pi[0, 0] * a + pi[1, 0] * m,
                            rho[1] * lane1 + pi[0, 1] * a + pi[1, 1] * m)
        else:
            if stack:
                x = merge(jj, x, stack.pop())
            x = block(l, x)
    if lane0 is not None:
        x = 0.5 * (lane0 + lane1)
    head = sd["tok_emb.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    return cfg.logit_softcap * torch.tanh(rn(x) @ head.T / cfg.logit_softcap)  # B.8


def packed_ids(B: int = 2, T: int = 40, seed: int = 0) -> torch.Tensor:
    """Random rows with BOS at a few positions (several documents per row, one row starting mid-document)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, TINY["vocab_size"], (B, T), generator=g)
    for row, positions in enumerate(([0, 9, 10, 23], [6, 30])[:B]):
        ids[row, [t for t in positions if t < T]] = BOS
    return ids


@pytest.mark.parametrize("feature", list(FEATURES))
def test_feature_matches_the_spec_reference(feature):
    cfg = ModelConfig(**TINY, **FEATURES[feature])
    load_config("baseline", sets=[f"model.{k}={v}" for k, v in {**TINY, **FEATURES[feature]}.items()])  # valid
    torch.manual_seed(0)
    model = GPT(cfg)
    sd = randomise(model)
    ids = packed_ids()
    with torch.no_grad():
        ours = model.logits(ids)
    spec = spec_logits(sd, cfg, ids)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, spec, **TOL), (ours - spec).abs().max()
    # the feature changes the output (so the comparison above tests something)
    base = GPT(ModelConfig(**TINY))
    base.load_state_dict({k: v for k, v in sd.items() if k in base.state_dict()
                          and base.state_dict()[k].shape == v.shape}, strict=False)
    base.double()
    with torch.no_grad():
        assert not torch.allclose(base.logits(ids), ours, atol=1e-3)


def test_training_loss_and_token_nll_use_the_same_forward():
    cfg = ModelConfig(**TINY, **FEATURES["all"])
    model = GPT(cfg)
    sd = randomise(model, seed=3)
    ids, tgt = packed_ids(seed=1), packed_ids(seed=2)
    spec = F.cross_entropy(spec_logits(sd, cfg, ids).flatten(0, 1), tgt.flatten(), reduction="none").view_as(tgt)
    spec = spec.float()  # the loss is fp32, like the record's
    with torch.no_grad():
        assert torch.allclose(model.token_nll(ids, tgt), spec, **TOL)
        assert torch.allclose(model(ids, tgt), spec.mean(), **TOL)


def test_loop_switch_changes_topology_and_skip_count():
    cfg = ModelConfig(**TINY, **FEATURES["loop"], skip_gates=True)
    model = GPT(cfg)
    sd = randomise(model)
    assert model.skip_weights.shape[0] == 4  # looped: 9 virtual layers -> 4 encoder, 5 decoder
    ids = packed_ids()
    with torch.no_grad():
        model.set_looping(False)
        flat = model.logits(ids)
        model.set_looping(True)
        looped = model.logits(ids)
    assert torch.allclose(flat, spec_logits(sd, cfg, ids, looped=False), **TOL)
    assert torch.allclose(looped, spec_logits(sd, cfg, ids, looped=True), **TOL)
    assert not torch.allclose(flat, looped, atol=1e-3)


def test_loop_switch_takes_effect_under_torch_compile():
    """The switch is a buffer, not a Python flag: a compiled model must follow it both ways
    (a flag that dynamo folded would keep the first topology)."""
    cfg = ModelConfig(**TINY, **FEATURES["loop"])
    model = GPT(cfg)
    randomise(model)
    model.float()
    ids = packed_ids()
    with torch.no_grad():
        model.set_looping(False)
        flat = model.logits(ids)
        model.set_looping(True)
        looped = model.logits(ids)
        compiled = torch.compile(model.logits, backend="aot_eager", dynamic=False)
        model.set_looping(False)
        c_flat = compiled(ids)
        model.set_looping(True)
        c_looped = compiled(ids)
        model.set_looping(False)
        c_flat2 = compiled(ids)
    assert torch.allclose(c_flat, flat, atol=1e-5) and torch.allclose(c_flat2, flat, atol=1e-5)
    assert torch.allclose(c_looped, looped, atol=1e-5)
    assert not torch.allclose(flat, looped, atol=1e-3)


def test_logits_are_causal_with_every_feature():
    cfg = ModelConfig(**TINY, **FEATURES["all"])
    model = GPT(cfg)
    randomise(model)
    ids = packed_ids()
    ids2 = ids.clone()
    ids2[:, 17:] = torch.randint(2, 61, (2, 23))
    with torch.no_grad():
        a, b = model.logits(ids), model.logits(ids2)
    assert torch.equal(a[:, :17], b[:, :17])
    assert not torch.allclose(a[:, 17:], b[:, 17:])


def leaked_positions(model: GPT, ids: torch.Tensor, seed: int = 0) -> list[tuple[int, int]]:
    """Change every non-BOS token of one document at a time; return the (document start, position)
    pairs where a logit at or after the next BOS moved."""
    g = torch.Generator().manual_seed(seed)
    bos = (ids[0] == BOS).nonzero().flatten().tolist()
    leaks = []
    with torch.no_grad():
        ref = model.logits(ids)
        for start, nxt in zip(bos, bos[1:]):
            changed = ids.clone()
            for t in range(start + 1, nxt):
                changed[0, t] = int(torch.randint(2, TINY["vocab_size"], (1,), generator=g))
            out = model.logits(changed)
            moved = (out[0, nxt:] != ref[0, nxt:]).any(-1).nonzero().flatten()
            leaks += [(start, nxt + int(p)) for p in moved]
    return leaks


def test_documents_are_isolated_and_a_smear_without_the_bos_mask_leaks(monkeypatch):
    cfg = ModelConfig(**TINY, **FEATURES["all"])
    model = GPT(cfg)
    randomise(model)
    ids = packed_ids(B=1, T=48, seed=5)
    ids[0, [0, 7, 8, 20, 33]] = BOS  # includes a one-token document
    assert leaked_positions(model, ids) == []

    def smear_without_bos_mask(self, e, input_ids, starts=None):
        cur, prev = e[:, 1:], e[:, :-1]
        gate = self.lam.to(e.dtype) * torch.sigmoid(F.linear(cur[..., : self.window], self.weight.to(e.dtype)))
        return torch.cat((e[:, :1], cur + gate * prev), dim=1)

    monkeypatch.setattr(smear_module.SmearGate, "forward", smear_without_bos_mask)
    assert leaked_positions(model, ids)  # the mutant leaks: the test can fail


def test_without_document_attention_documents_do_leak():
    cfg = ModelConfig(**TINY, **{**FEATURES["all"], "doc_attention": False, "max_segment": 0})
    model = GPT(cfg)
    randomise(model)
    assert leaked_positions(model, packed_ids(B=1, T=48, seed=5))


@pytest.mark.parametrize("max_segment", [0, 4])
def test_packed_documents_score_as_if_alone(max_segment):
    cfg = ModelConfig(**TINY, **{**FEATURES["all"], "max_segment": max_segment})
    model = GPT(cfg)
    randomise(model)
    g = torch.Generator().manual_seed(7)
    docs = [torch.cat((torch.tensor([BOS]), torch.randint(2, 61, (n,), generator=g))) for n in (5, 0, 11, 3, 9)]
    packed = torch.cat(docs)[None]
    with torch.no_grad():
        together = model.logits(packed)[0]
        start = 0
        for doc in docs:
            alone = model.logits(doc[None])[0]
            assert torch.allclose(together[start: start + len(doc)], alone, **TOL)
            start += len(doc)
        tgt = torch.roll(packed, -1, 1)
        nll = model.token_nll(packed, tgt)[0]
        start = 0
        for doc in docs:  # per-document losses (targets inside the document) agree too
            n = len(doc) - 1
            if n:
                alone = model.token_nll(doc[None, :-1], doc[None, 1:])[0]
                assert torch.allclose(nll[start: start + n], alone, **TOL)
            start += len(doc)


def test_varlen_branch_gets_the_segments_as_cu_seqlens(monkeypatch):
    """flash-attn's varlen kernel (CUDA only) gets each segment as one sequence: a stand-in with
    its contract (segments attended one by one with SDPA) gives the masked-SDPA result."""
    from pgolf.model.documents import DocumentSpans, document_spans

    def fake_varlen(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
        assert causal and torch.equal(cu_seqlens_q, cu_seqlens_k) and cu_seqlens_q.dtype == torch.int32
        out = torch.zeros_like(q)
        bounds = cu_seqlens_q.tolist()
        for lo, hi in zip(bounds, bounds[1:]):
            if hi > lo:
                assert hi - lo <= max_seqlen_q
                o = F.scaled_dot_product_attention(q[lo:hi].transpose(0, 1), k[lo:hi].transpose(0, 1),
                                                   v[lo:hi].transpose(0, 1), is_causal=True, enable_gqa=True)
                out[lo:hi] = o.transpose(0, 1)
        return out

    cfg = ModelConfig(**TINY, **FEATURES["all"])
    model = GPT(cfg)
    randomise(model)
    ids = packed_ids()
    with torch.no_grad():
        expected = model.logits(ids)
        for block in model.blocks:
            block.attn._flash_varlen = fake_varlen
        spans = document_spans(ids, bos_id=BOS, max_segment=cfg.max_segment, varlen=True)
        assert isinstance(spans, DocumentSpans) and spans.cu_seqlens.numel() % 64 == 0
        monkeypatch.setattr(GPT, "_document_spans", lambda self, x, piece_starts=None: spans)
        got = model.logits(ids)
    assert torch.allclose(got, expected, **TOL)


def test_record_initialisation():
    cfg = ModelConfig(**{**TINY, "model_dim": 64, "num_heads": 4}, **FEATURES["all"], init="record")
    model = GPT(cfg)
    b = model.blocks[2]
    for w in (b.attn.c_q.weight, b.attn.c_k.weight, b.attn.c_v.weight):  # rows orthonormal (B.9)
        assert torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-5)
    up = b.mlp.fc.weight  # [128, 64]: columns orthonormal
    assert torch.allclose(up.T @ up, torch.eye(up.shape[1]), atol=1e-5)
    assert torch.count_nonzero(b.attn.proj.weight) == 0 and torch.count_nonzero(b.mlp.proj.weight) == 0
    assert torch.all(b.attn.q_gain == 5.0) and torch.all(b.attn.attn_gate_w == 0)
    assert torch.all(model.skip_weights == 1) and torch.all(model.skip_gates == 0)
    assert torch.all(model.parallel_resid_lambdas == 1.1) and torch.all(model.parallel_post_lambdas == 1)
    assert torch.all(model.smear.weight == 0) and torch.all(model.smear.lam == 0)
    assert torch.equal(b.resid_mix, torch.stack((torch.ones(64), torch.zeros(64))))
    baseline = GPT(ModelConfig(**{**TINY, "model_dim": 64, "num_heads": 4}))
    w = baseline.blocks[2].attn.c_q.weight
    assert not torch.allclose(w @ w.T, torch.eye(64), atol=1e-2)


def test_zero_gates_start_as_the_identity():
    """At initialisation the SmearGate adds nothing."""
    cfg = ModelConfig(**TINY, smear_gate=True, attn_gate=True)
    model = GPT(cfg)
    e = torch.randn(2, 9, 32)
    assert torch.equal(model.smear(e, packed_ids(T=9)), e)


def test_record_preset_has_the_record_parameter_count():
    model = GPT(load_config("record").model)
    assert sum(p.numel() for p in model.parameters()) == 35_945_671
    assert model.skip_weights.shape == (8, 512)
    assert [len(o) for o in model.orders[True]] == [8, 9] and [len(o) for o in model.orders[False]] == [5, 6]
    assert model.orders[True] == ((0, 1, 2, 3, 4, 5, 3, 4), (5, 3, 4, 5, 6, 7, 8, 9, 10))
