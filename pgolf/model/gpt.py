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

Dtypes (:meth:`GPT.place`): every parameter float32 (``dtype_layout="fp32"``), or the official
script's layout (``"official"``): its ``.bfloat16()`` followed by restoring the linear layers and the
control parameters to float32 leaves the token embedding and the RoPE ``inv_freq`` buffers in bf16,
and every initial weight rounded to bf16 (the restored float32 ones included).

Parameter names equal those of the official ``train_gpt.py``, so its state dicts load directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.blocks import Block
from pgolf.model.layers import CastedLinear, QuantEmbedding, rms_norm
from pgolf.model.roles import HEAD


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
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True, role=HEAD)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, CastedLinear) and module.zero_init:
                nn.init.zeros_(module.weight)

    def place(self, device: torch.device | str) -> "GPT":
        """Move to ``device`` with the parameter dtypes of ``cfg.dtype_layout`` (module docstring);
        returns ``self``."""
        self.to(device=device, dtype=torch.float32)
        if self.cfg.dtype_layout == "official":
            for p in self.parameters():
                p.data = p.data.bfloat16() if p is self.tok_emb.weight else p.data.bfloat16().float()
            for block in self.blocks:
                block.attn.rotary.inv_freq = block.attn.rotary.inv_freq.bfloat16()
        return self

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
