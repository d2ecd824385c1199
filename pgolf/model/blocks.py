"""The MLP and the transformer block (residual mix with the input embedding, scaled residuals),
sequential or as two parallel residual lanes."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.documents import DocumentSpans
from pgolf.model.layers import CastedLinear, rms_norm

LEAKY_SLOPE = 0.5


class MLP(nn.Module):
    """``proj(phi(fc(x)))`` with hidden width ``mlp_mult * model_dim``; ``proj`` starts at zero.
    ``phi(u) = relu(u)^2`` (baseline) or ``leaky_relu2``: ``max(u, 0.5 u)^2`` (RECORD_STACK B.3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_mult * cfg.model_dim
        self.fc = CastedLinear(cfg.model_dim, hidden)
        self.proj = CastedLinear(hidden, cfg.model_dim, zero_init=True)
        self.leaky = cfg.mlp_activation == "leaky_relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.fc(x)
        return self.proj((F.leaky_relu(u, LEAKY_SLOPE) if self.leaky else torch.relu(u)).square())


class Block(nn.Module):
    """``x = mix[0] x + mix[1] x0`` (the mix replaces the stream), then
    ``x += attn_scale * attn(c rms(x))`` and ``x += mlp_scale * mlp(c rms(x))`` with learned
    per-channel gains; ``c = 1/sqrt(layer + 1)`` with ``ln_scale`` (``layer`` = the physical index,
    the same on every pass of a looped layer), else 1."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        d = cfg.model_dim
        self.attn = CausalSelfAttention(cfg, layer)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(d, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(d, dtype=torch.float32))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))).float())
        self.ln_scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else None

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        n = rms_norm(x)
        return n if self.ln_scale is None else n * self.ln_scale

    def forward(self, x: torch.Tensor, x0: torch.Tensor, doc: DocumentSpans | None = None) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(self._norm(x), doc)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self._norm(x))

    def forward_parallel(self, lane0: torch.Tensor, lane1: torch.Tensor, x0: torch.Tensor, resid: torch.Tensor,
                         post: torch.Tensor, doc: DocumentSpans | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Two residual lanes (RECORD_STACK B.7): attention reads ``mix[0] lane0 + mix[1] x0``, the
        MLP reads ``lane1`` (not this layer's attention output);
        ``lane_i <- resid[i] lane_i + post[0, i] a + post[1, i] m`` (``resid [2]``, ``post [2, 2]``)."""
        dt = lane0.dtype
        mix, resid, post = self.resid_mix.to(dt), resid.to(dt), post.to(dt)
        a = self.attn_scale.to(dt) * self.attn(self._norm(mix[0] * lane0 + mix[1] * x0), doc)
        m = self.mlp_scale.to(dt) * self.mlp(self._norm(lane1))
        return (resid[0] * lane0 + post[0, 0] * a + post[1, 0] * m,
                resid[1] * lane1 + post[0, 1] * a + post[1, 1] * m)
