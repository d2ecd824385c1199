"""The MLP and the transformer block (residual mix with the input embedding, scaled residuals)."""
from __future__ import annotations

import torch
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.layers import CastedLinear, rms_norm


class MLP(nn.Module):
    """``proj(relu(fc(x))^2)`` with hidden width ``mlp_mult * model_dim``; ``proj`` starts at zero."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_mult * cfg.model_dim
        self.fc = CastedLinear(cfg.model_dim, hidden)
        self.proj = CastedLinear(hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    """``x = mix[0] x + mix[1] x0``, then ``x += attn_scale * attn(rms(x))`` and
    ``x += mlp_scale * mlp(rms(x))`` (learned per-channel gains, residual mix with the embedding)."""

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
