"""Causal self-attention of the baseline: GQA, QK-norm, RoPE, per-head query gain.

``q, k = rms(q), rms(k)``; ``q, k = rope(q), rope(k)`` (the two halves of each head rotate by
``t * base^(-2i/head_dim)``); ``q *= q_gain[h]``; ``y = softmax(q k^T / sqrt(head_dim) + causal) v``;
output ``proj(y)`` (zero-initialised).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear, rms_norm


class Rotary(nn.Module):
    """Rotary position embedding tables for one head dimension.

    ``cos``/``sin`` of ``t * inv_freq`` (``[1, 1, T, head_dim/2]``), with the positions ``t`` and the
    product in ``inv_freq``'s dtype: float32, or bf16 under ``ModelConfig.dtype_layout="official"``
    (as train_gpt.py, where positions above 256 round to even). They are computed at every call: a
    ``T x head_dim/2`` outer product, negligible next to attention, and nothing cached on the
    module -- a Python-side cache makes ``torch.compile`` guard on it and recompile the whole model
    once it is filled (a full recompile inside the timed training steps).
    """

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
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
    """GQA self-attention with QK-norm, RoPE and a learned per-head query gain (module docstring)."""

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
