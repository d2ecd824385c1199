"""Causal self-attention: GQA, QK-norm, RoPE, per-head query gain, and the record stack's options.

``q, k = rms(q), rms(k)``; ``q, k = rope(q), rope(k)``; ``q *= q_gain[h]``;
``y = softmax(q k^T / sqrt(head_dim) + mask) v``; output ``proj(y)`` (zero-initialised).

* RoPE (baseline: the whole head): the first ``r = rope_dims`` dimensions rotate, split in halves
  ``a = x[0:r/2], b = x[r/2:r]`` with ``theta_j = t * base^(-2j/r)``:
  ``(a, b) -> (a cos + b sin, -a sin + b cos)``; dimensions ``r..`` pass through (RECORD_STACK B.2.3).
* mask: causal, or causal within a document segment (:mod:`pgolf.model.documents`); in a packed
  row the RoPE position ``t`` is the index within the token's piece.
* XSA (``xsa_last_n``, B.2.6): ``y_h <- y_h - <y_h, v^_g> v^_g`` with ``v^_g = v_g / ||v_g||`` the
  token's own value in the head's KV group ``g = h // (H / Hkv)``.
* sparse output gate (``attn_gate``, B.2.7): ``y_h <- sigmoid(s * W_g[h] . n[0:w]) y_h`` with ``n``
  the attention's (normalised, LN-scaled) input, ``W_g [H, w]`` zero-initialised, ``s =
  attn_gate_scale``, ``w = gate_window``.
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.documents import DocumentSpans
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


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int | None = None) -> torch.Tensor:
    """Rotate the two halves of the first ``rope_dims`` (default: all) head dimensions:
    ``(x1, x2) -> (x1 c + x2 s, -x1 s + x2 c)``; the remaining dimensions pass through."""
    if rope_dims is not None and rope_dims < x.size(-1):
        return torch.cat((apply_rotary(x[..., :rope_dims], cos, sin), x[..., rope_dims:]), dim=-1)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def exclude_self_value(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: remove from each head's output ``y [B, T, H, hd]`` its component along the token's own
    unit value vector of the head's KV group (``v [B, T, Hkv, hd]``)."""
    B, T, H, hd = y.shape
    yg = y.reshape(B, T, v.size(2), H // v.size(2), hd)  # [B, T, Hkv, H/Hkv, hd]
    vn = F.normalize(v, dim=-1).unsqueeze(3)  # [B, T, Hkv, 1, hd]
    return (yg - (yg * vn).sum(-1, keepdim=True) * vn).reshape(B, T, H, hd)


def _flash_attn(name: str):
    """flash-attn's function ``name`` when the package is installed, else None."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    import flash_attn
    return getattr(flash_attn, name)


def flash_varlen_available() -> bool:
    """Whether flash-attn's varlen kernel is installed (document attention then uses it on CUDA)."""
    return _flash_attn("flash_attn_varlen_func") is not None


class CausalSelfAttention(nn.Module):
    """GQA self-attention with QK-norm, RoPE and a learned per-head query gain (module docstring)."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.model_dim // cfg.num_heads
        self.rope_dims = cfg.rope_dims or self.head_dim
        self.xsa = layer >= cfg.num_layers - cfg.xsa_last_n
        kv_dim = cfg.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.rope_dims, cfg.rope_base)
        self.gate_window, self.attn_gate_scale = cfg.gate_window, cfg.attn_gate_scale
        self.attn_gate_w = (nn.Parameter(torch.zeros(cfg.num_heads, cfg.gate_window, dtype=torch.float32))
                            if cfg.attn_gate else None)
        self._flash = _flash_attn("flash_attn_func")
        self._flash_varlen = _flash_attn("flash_attn_varlen_func")

    def _use_flash(self, q: torch.Tensor) -> bool:
        """flash-attn when installed, on CUDA, in half precision; SDPA otherwise."""
        return self._flash is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc: DocumentSpans | None) -> torch.Tensor:
        """``q [B, H, T, hd]``, ``k, v [B, Hkv, T, hd]`` -> ``y [B, T, H, hd]``, causal (within
        ``doc``'s segments when given)."""
        B, H, T, hd = q.shape
        if doc is not None and doc.cu_seqlens is not None:
            flat = [t.transpose(1, 2).reshape(B * T, t.size(1), hd) for t in (q, k, v)]  # [B*T, heads, hd]
            y = self._flash_varlen(*flat, cu_seqlens_q=doc.cu_seqlens, cu_seqlens_k=doc.cu_seqlens,
                                   max_seqlen_q=doc.max_seqlen, max_seqlen_k=doc.max_seqlen, causal=True)
            return y.reshape(B, T, H, hd)
        if doc is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=doc.mask,
                                                  enable_gqa=self.num_kv_heads != self.num_heads).transpose(1, 2)
        if self._use_flash(q):
            return self._flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)  # [B, T, H, hd]
        return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              enable_gqa=self.num_kv_heads != self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, doc: DocumentSpans | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q = self.c_q(x).reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.c_k(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.c_v(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, x.device, q.dtype)  # [1, 1, T, r/2]
        if doc is not None and doc.positions is not None:  # packed pieces: positions within each piece
            cos, sin = cos[0, 0][doc.positions].unsqueeze(1), sin[0, 0][doc.positions].unsqueeze(1)  # [B, 1, T, r/2]
        q, k = apply_rotary(q, cos, sin, self.rope_dims), apply_rotary(k, cos, sin, self.rope_dims)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = self._attend(q, k, v, doc)  # [B, T, H, hd]
        if self.xsa:
            y = exclude_self_value(y, v.transpose(1, 2))
        if self.attn_gate_w is not None:
            gate = torch.sigmoid(self.attn_gate_scale * F.linear(x[..., : self.gate_window],
                                                                 self.attn_gate_w.to(x.dtype)))  # [B, T, H]
            y = y * gate[..., None]
        return self.proj(y.reshape(B, T, D))
