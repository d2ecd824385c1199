"""The GPT of the official Parameter Golf baseline, readable in one sitting.

Architecture (``ModelConfig`` defaults = the official baseline, 17,059,912 parameters):

- token embedding, RMS-normalised (no weight) -> ``x0``;
- ``num_layers`` blocks; the first half (encoder) saves its outputs, the second half (decoder)
  adds them back in reverse order, each scaled by a learned per-channel ``skip_weights[i]``
  (U-Net skips);
- each block: ``x = mix[0]*x + mix[1]*x0`` (learned residual mix with the input embedding), then
  ``x += attn_scale * attn(rms(x))`` and ``x += mlp_scale * mlp(rms(x))``;
- attention: GQA with ``num_kv_heads`` KV heads, RMS-normalised q and k (QK-norm), RoPE
  (base ``rope_base``), per-head query gain ``q_gain`` (init ``qk_gain_init``), causal;
- MLP: ``proj(relu(fc(x))^2)`` with hidden width ``mlp_mult * model_dim``;
- output projections (attention ``proj``, MLP ``proj``, an untied head) start at zero;
- logits = ``softcap * tanh(h @ E^T / softcap)`` with ``E`` the tied embedding
  (init std ``tied_embed_init_std``) or an untied ``lm_head``.

Parameter names equal those of the official ``train_gpt.py``, so its state dicts load directly.
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import CastedLinear, QuantEmbedding

# Parameters that are control gains rather than weight matrices (official name patterns):
# they go to Adam, stay fp32, and are stored unquantised.
CONTROL_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight")


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dimension, no learned weight."""
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """Rotary position embedding tables for one head dimension.

    ``cos``/``sin`` of ``t * inv_freq`` (``[1, 1, T, head_dim/2]``) are computed at every call: a
    ``T x head_dim/2`` outer product, negligible next to attention, and nothing cached on the
    module -- a Python-side cache makes ``torch.compile`` guard on it and recompile the whole model
    once it is filled (a full recompile inside the timed training steps).
    """

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device))  # [T, head_dim/2]
        return freqs.cos()[None, None].to(dtype), freqs.sin()[None, None].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the head dimension: ``(x1, x2) -> (x1 c + x2 s, -x1 s + x2 c)``."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def _flash_attn_func():
    """flash-attn's ``flash_attn_func`` when the package is installed, else None."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_func
    return flash_attn_func


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.model_dim // cfg.num_heads
        kv_dim = cfg.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, cfg.rope_base)
        self._flash = _flash_attn_func()

    def _use_flash(self, q: torch.Tensor) -> bool:
        """flash-attn when installed, on CUDA, in half precision; SDPA otherwise."""
        return self._flash is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q = self.c_q(x).reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.c_k(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.c_v(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        if self._use_flash(q):
            y = self._flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)  # [B, T, H, hd]
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=self.num_kv_heads != self.num_heads).transpose(1, 2)
        return self.proj(y.reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_mult * cfg.model_dim
        self.fc = CastedLinear(cfg.model_dim, hidden)
        self.proj = CastedLinear(hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.model_dim
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(d, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(d, dtype=torch.float32))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))).float())

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    """The baseline GPT. ``forward(x, y)`` returns the mean cross-entropy (nats) like the official
    script; :meth:`token_nll`, :meth:`logits` and :meth:`hidden_states` serve evaluation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = QuantEmbedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim, dtype=torch.float32))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, CastedLinear) and module.zero_init:
                nn.init.zeros_(module.weight)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final RMS-normalised hidden states ``[B, T, model_dim]`` (before the output head)."""
        x = rms_norm(self.tok_emb(input_ids))  # [B, T, D]
        x0, skips = x, []
        for block in self.blocks[: self.num_encoder_layers]:
            x = block(x, x0)
            skips.append(x)
        for i, block in enumerate(self.blocks[self.num_encoder_layers:]):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = block(x, x0)
        return rms_norm(x)

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Soft-capped logits ``c * tanh(h W^T / c)`` from hidden states ``[..., D]``."""
        if self.lm_head is None:
            raw = F.linear(h, self.tok_emb.effective_weight().to(h.dtype))
        else:
            raw = self.lm_head(h)
        c = self.cfg.logit_softcap
        return c * torch.tanh(raw / c)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Soft-capped logits ``[B, T, vocab]``."""
        return self.logits_from_hidden(self.hidden_states(input_ids))

    def token_nll(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood in nats, float32 ``[B, T]``."""
        logits = self.logits(input_ids).float()
        return F.cross_entropy(logits.flatten(0, 1), target_ids.flatten(), reduction="none").view_as(target_ids)

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats over all target tokens (the training loss)."""
        logits = self.logits(input_ids).float()
        return F.cross_entropy(logits.flatten(0, 1), target_ids.flatten())


def prepare_for_training(model: GPT, device: torch.device) -> GPT:
    """Official dtype layout: weights fp32 (cast to bf16 at use under autocast), moved to ``device``."""
    return model.to(device=device, dtype=torch.float32)


def parameter_groups(model: GPT) -> dict[str, list[nn.Parameter]]:
    """Split parameters into the official optimiser groups.

    - ``embed``: the token embedding (Adam, ``tied_embed_lr`` or ``embed_lr``);
    - ``head``: an untied output head (Adam, ``head_lr``);
    - ``matrix``: 2-D block weights (Muon, ``matrix_lr``);
    - ``scalar``: vectors, gains and skip weights (Adam, ``scalar_lr``).
    """
    groups: dict[str, list[nn.Parameter]] = {"embed": [model.tok_emb.weight], "head": [], "matrix": [], "scalar": []}
    for name, p in model.blocks.named_parameters():
        is_control = p.ndim < 2 or any(pat in name for pat in CONTROL_PATTERNS)
        groups["scalar" if is_control else "matrix"].append(p)
    if model.skip_weights.numel():
        groups["scalar"].append(model.skip_weights)
    if model.lm_head is not None:
        groups["head"].append(model.lm_head.weight)
    return groups
