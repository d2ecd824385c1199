"""The baseline GPT: parameter count, official state-dict compatibility, causality, configurability."""
import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig, load_config
from pgolf.model.gpt import GPT
from pgolf.optim.optimizers import parameter_groups


def official_state_dict(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the names and shapes official train_gpt.py saves, random non-zero values."""
    g = torch.Generator().manual_seed(seed)
    d, hd = cfg.model_dim, cfg.model_dim // cfg.num_heads
    kv, hidden = cfg.num_kv_heads * hd, cfg.mlp_mult * cfg.model_dim

    def rnd(*shape, std=0.05):
        return torch.randn(*shape, generator=g) * std

    sd = {"tok_emb.weight": rnd(cfg.vocab_size, d, std=0.5),
          "skip_weights": 1 + rnd(cfg.num_layers // 2, d, std=0.1)}
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        sd |= {p + "attn.c_q.weight": rnd(d, d), p + "attn.c_k.weight": rnd(kv, d), p + "attn.c_v.weight": rnd(kv, d),
               p + "attn.proj.weight": rnd(d, d), p + "attn.q_gain": 1.5 + rnd(cfg.num_heads, std=0.1),
               p + "mlp.fc.weight": rnd(hidden, d), p + "mlp.proj.weight": rnd(d, hidden),
               p + "attn_scale": 1 + rnd(d, std=0.1), p + "mlp_scale": 1 + rnd(d, std=0.1),
               p + "resid_mix": torch.stack((1 + rnd(d, std=0.1), rnd(d, std=0.1)))}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = rnd(cfg.vocab_size, d)
    return sd


def spec_loss(sd: dict[str, torch.Tensor], cfg: ModelConfig, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The baseline's loss written directly from the challenge description, independent of pgolf.model."""
    B, T = x.shape
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.model_dim
    hd = D // H
    norm = lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + torch.finfo(t.dtype).eps)  # noqa: E731
    inv = 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2).double() / hd)
    ang = torch.arange(T).double()[:, None] * inv[None]
    cos, sin = ang.cos().float(), ang.sin().float()

    def rope(t):  # [B, h, T, hd]
        a, b = t[..., : hd // 2], t[..., hd // 2:]
        return torch.cat((a * cos + b * sin, b * cos - a * sin), -1)

    def block(i, h, h0):
        p = f"blocks.{i}."
        mix = sd[p + "resid_mix"]
        h = mix[0] * h + mix[1] * h0
        a = norm(h)
        q = (a @ sd[p + "attn.c_q.weight"].T).view(B, T, H, hd).transpose(1, 2)
        k = (a @ sd[p + "attn.c_k.weight"].T).view(B, T, Hkv, hd).transpose(1, 2)
        v = (a @ sd[p + "attn.c_v.weight"].T).view(B, T, Hkv, hd).transpose(1, 2)
        q, k = rope(norm(q)), rope(norm(k))
        q = q * sd[p + "attn.q_gain"][None, :, None, None]
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, D) @ sd[p + "attn.proj.weight"].T
        h = h + sd[p + "attn_scale"] * o
        m = torch.relu(norm(h) @ sd[p + "mlp.fc.weight"].T).square() @ sd[p + "mlp.proj.weight"].T
        return h + sd[p + "mlp_scale"] * m

    h = norm(sd["tok_emb.weight"][x])
    h0, skips, n_enc = h, [], cfg.num_layers // 2
    for i in range(n_enc):
        h = block(i, h, h0)
        skips.append(h)
    for j in range(cfg.num_layers - n_enc):
        if skips:
            h = h + sd["skip_weights"][j] * skips.pop()
        h = block(n_enc + j, h, h0)
    head = sd["tok_emb.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    logits = norm(h) @ head.T
    logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))


def test_baseline_parameter_count_matches_official():
    cfg = load_config("baseline").model
    assert sum(p.numel() for p in GPT(cfg).parameters()) == 17_059_912


def test_official_state_dict_loads_and_gives_the_same_loss():
    torch.manual_seed(0)
    cfg = load_config("baseline").model
    sd = official_state_dict(cfg)
    model = GPT(cfg)
    model.load_state_dict(sd, strict=True)
    x = torch.randint(0, cfg.vocab_size, (2, 48))
    y = torch.randint(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        ours, spec = model(x, y), spec_loss(sd, cfg, x, y)
    assert abs(ours.item() - spec.item()) / spec.item() < 1e-5, (ours.item(), spec.item())
    assert spec.item() > 1.0  # random non-zero weights: a real, non-trivial loss


@pytest.mark.parametrize("cfg", [
    ModelConfig(vocab_size=97, num_layers=3, model_dim=48, num_heads=6, num_kv_heads=2, mlp_mult=3,
                tie_embeddings=False, logit_softcap=15.0, rope_base=500.0),
    ModelConfig(vocab_size=64, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=2, mlp_mult=1),
])
def test_every_dimension_is_configurable(cfg):
    sd = official_state_dict(cfg, seed=1)
    model = GPT(cfg)
    model.load_state_dict(sd, strict=True)
    x = torch.randint(0, cfg.vocab_size, (3, 20))
    y = torch.randint(0, cfg.vocab_size, (3, 20))
    with torch.no_grad():
        assert model.logits(x).shape == (3, 20, cfg.vocab_size)
        assert model.hidden_states(x).shape == (3, 20, cfg.model_dim)
        assert torch.allclose(model.token_nll(x, y).mean(), model(x, y), rtol=1e-5)
        assert abs(model(x, y).item() - spec_loss(sd, cfg, x, y).item()) < 1e-4


def test_logits_are_causal():
    cfg = ModelConfig(vocab_size=50, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)
    model = GPT(cfg)
    model.load_state_dict(official_state_dict(cfg, seed=2))
    x = torch.randint(0, 50, (1, 24))
    x2 = x.clone()
    x2[0, 13:] = torch.randint(0, 50, (11,))
    with torch.no_grad():
        a, b = model.logits(x), model.logits(x2)
    assert torch.equal(a[0, :13], b[0, :13])
    assert not torch.allclose(a[0, 13:], b[0, 13:])


def test_fresh_model_has_official_init():
    cfg = ModelConfig(vocab_size=128, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2)
    model = GPT(cfg)
    assert torch.count_nonzero(model.blocks[0].attn.proj.weight) == 0
    assert torch.count_nonzero(model.blocks[1].mlp.proj.weight) == 0
    assert abs(model.tok_emb.weight.std().item() - cfg.tied_embed_init_std) < 0.001
    groups = parameter_groups(model)
    assert len(groups["matrix"]) == 2 * 6 and not groups["head"]
    assert any(p is model.skip_weights for p in groups["scalar"])
    n = sum(p.numel() for g in groups.values() for p in g)
    assert n == sum(p.numel() for p in model.parameters())


def test_inference_before_training_leaves_nothing_training_cannot_use():
    cfg = ModelConfig(vocab_size=32, num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1)
    model = GPT(cfg)
    x = torch.randint(0, 32, (1, 8))
    with torch.inference_mode():
        model.logits(x)  # validation first (as right after a resume)
    model(x, x).backward()
    assert model.blocks[0].attn.c_q.weight.grad is not None


def test_compiled_training_steps_do_not_recompile():
    """The first call compiles; later steps (and a validation call in between) must reuse it. A
    module attribute filled on first use (a RoPE cache once) made step 2 recompile the model."""
    cfg = ModelConfig(vocab_size=32, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1)
    model = GPT(cfg)
    graphs = []

    def count_graphs(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    fwd = torch.compile(model, backend=count_graphs, dynamic=False)
    x = torch.randint(0, 32, (2, 8))
    fwd(x, x).backward()
    first = len(graphs)
    with torch.no_grad():
        model.logits(x)
    for _ in range(2):
        fwd(x, x).backward()
    assert first > 0 and len(graphs) == first


def test_flash_attention_branch_uses_the_flash_layout(monkeypatch):
    """flash-attn takes [B, T, H, hd] tensors with fewer K/V heads (GQA) and causal=True; a stand-in
    with that contract (computed by SDPA) must give the same output as the SDPA branch."""
    from pgolf.model.attention import CausalSelfAttention

    calls = []

    def fake_flash(q, k, v, causal):
        calls.append((q.shape, k.shape, causal))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, enable_gqa=True)
        return out.transpose(1, 2)

    cfg = ModelConfig(vocab_size=32, num_layers=1, model_dim=32, num_heads=4, num_kv_heads=2)
    attn = CausalSelfAttention(cfg)
    torch.nn.init.normal_(attn.proj.weight)
    x = torch.randn(2, 9, 32)
    expected = attn(x)
    attn._flash = fake_flash
    monkeypatch.setattr(CausalSelfAttention, "_use_flash", lambda self, q: True)
    assert torch.allclose(attn(x), expected, atol=1e-6)
    assert calls == [((2, 9, 4, 8), (2, 9, 2, 8), True)]


def test_training_and_eval_use_bf16_autocast_on_cuda_only():
    import warnings

    from pgolf.util.device import autocast_for

    with warnings.catch_warnings():  # a CPU-only build warns that CUDA autocast is unavailable here
        warnings.simplefilter("ignore")
        cuda = autocast_for(torch.device("cuda"))
    assert isinstance(cuda, torch.autocast) and cuda.fast_dtype == torch.bfloat16 and cuda.device == "cuda"
    assert not isinstance(autocast_for(torch.device("cpu")), torch.autocast)  # CPU runs stay fp32 (exact tests)
