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
  (init std ``tied_embed_init_std``) or an untied ``lm_head``; the loss of the raw logits is
  :mod:`pgolf.model.loss`'s, through the fused Triton kernel when ``loss_impl`` says so.

Dtypes (:meth:`GPT.place`): every parameter float32 (``dtype_layout="fp32"``), or the official
script's layout (``"official"``): its ``.bfloat16()`` followed by restoring the linear layers and the
control parameters to float32 leaves the token embedding and the RoPE ``inv_freq`` buffers in bf16,
and every initial weight rounded to bf16 (the restored float32 ones included).

Parameter names equal those of the official ``train_gpt.py``, so its state dicts load directly.

The record stack's features (RECORD_STACK.md section B) are ``ModelConfig`` options, each off by
default and each used by every forward path (training loss, evaluation logits, hidden states):
SmearGate (:mod:`pgolf.model.smear`), partial RoPE, XSA and the sparse attention gate
(:mod:`pgolf.model.attention`), LeakyReLU(0.5)^2, LN scale and parallel lanes
(:mod:`pgolf.model.blocks`), document-aware attention (:mod:`pgolf.model.documents`), and here:

- depth recurrence: the layer order of :mod:`pgolf.model.topology`, looped while the bool buffer
  ``looping`` is true (a tensor, so ``torch.compile`` cannot fold it: reading it breaks the graph and
  both topologies compile; it is true at construction -- evaluation runs looped -- and training
  turns it off until ``loop_enable_frac``); the skip stack follows the topology, one skip weight
  row per skip of the looped topology;
- gated skips: ``x <- s_g x + (1 - s_g) (w_j * skip)`` with ``s_g = sigmoid(skip_gates[j])``;
- parallel lanes from physical layer ``parallel_start_layer``: at the first such decoder layer
  ``lane0 = lane1 = x``, skips merge into lane 0 only, and the final hidden state is
  ``(lane0 + lane1) / 2``; lambdas ``parallel_resid_lambdas [L, 2]`` (init 1.1) and
  ``parallel_post_lambdas [L, 2, 2]`` (init 1);
- ``init="record"``: W_Q, W_K, W_V and the MLP's W_up orthogonal (gain 1), output projections zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.attention import flash_varlen_available
from pgolf.model.blocks import Block
from pgolf.model.documents import DocumentSpans, document_spans
from pgolf.model.layers import CastedLinear, QuantEmbedding, rms_norm
from pgolf.model.loss import softcap, softcapped_cross_entropy
from pgolf.model.roles import HEAD
from pgolf.model.smear import SmearGate
from pgolf.model.topology import layer_order


class GPT(nn.Module):
    """The GPT. ``forward(x, y)`` returns the mean cross-entropy (nats) like the official script;
    :meth:`token_nll`, :meth:`logits` and :meth:`hidden_states` serve evaluation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = QuantEmbedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        self.orders = {looped: layer_order(cfg, looped=looped) for looped in (False, True)}
        num_skips = min(len(order) for order in self.orders[True])
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim, dtype=torch.float32))
        self.skip_gates = nn.Parameter(torch.zeros(num_skips, cfg.model_dim)) if cfg.skip_gates else None
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.num_layers))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True, role=HEAD)
        self.smear = SmearGate(cfg) if cfg.smear_gate else None
        if cfg.parallel_start_layer:
            self.parallel_resid_lambdas = nn.Parameter(torch.full((cfg.num_layers, 2), 1.1))
            self.parallel_post_lambdas = nn.Parameter(torch.ones(cfg.num_layers, 2, 2))
        if cfg.num_loops:
            self.register_buffer("looping", torch.ones((), dtype=torch.bool), persistent=False)
        self._varlen = cfg.doc_attention and flash_varlen_available()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, CastedLinear) and module.zero_init:
                nn.init.zeros_(module.weight)
        if self.cfg.init == "record":
            for block in self.blocks:
                for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.fc):
                    nn.init.orthogonal_(lin.weight, gain=1.0)

    def set_looping(self, on: bool) -> None:
        """Switch depth recurrence on or off (a buffer write: compiled forwards follow it)."""
        if not self.cfg.num_loops:
            raise ValueError("set_looping: this model has no looped layers (model.num_loops=0)")
        self.looping.fill_(on)

    def _document_spans(self, input_ids: torch.Tensor) -> DocumentSpans | None:
        cfg = self.cfg
        if not cfg.doc_attention:
            return None
        varlen = self._varlen and input_ids.is_cuda and torch.is_autocast_enabled("cuda")
        return document_spans(input_ids, bos_id=cfg.bos_id, max_segment=cfg.max_segment, varlen=varlen)

    def _merge_skip(self, j: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        scaled = self.skip_weights[j].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + scaled
        return torch.lerp(scaled, x, torch.sigmoid(self.skip_gates[j].to(x.dtype)))

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
        x = self.tok_emb(input_ids)  # [B, T, D]
        if self.smear is not None:
            x = self.smear(x, input_ids)
        x = rms_norm(x)
        doc = self._document_spans(input_ids)
        encoder, decoder = self.orders[bool(self.cfg.num_loops) and bool(self.looping)]
        psl = self.cfg.parallel_start_layer
        x0, skips, lanes = x, [], None
        for i in encoder:
            x = self.blocks[i](x, x0, doc)
            skips.append(x)
        for j, i in enumerate(decoder):
            parallel = bool(psl) and i >= psl
            if parallel and lanes is None:
                lanes = (x, x)
            if skips:
                if parallel:
                    lanes = (self._merge_skip(j, lanes[0], skips.pop()), lanes[1])
                else:
                    x = self._merge_skip(j, x, skips.pop())
            if parallel:
                lanes = self.blocks[i].forward_parallel(*lanes, x0, self.parallel_resid_lambdas[i],
                                                        self.parallel_post_lambdas[i], doc)
            else:
                x = self.blocks[i](x, x0, doc)
        if lanes is not None:
            x = 0.5 * (lanes[0] + lanes[1])
        return rms_norm(x)

    def raw_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits before the softcap, ``h W^T`` from hidden states ``[..., D]``."""
        if self.lm_head is None:
            return F.linear(h, self.tok_emb.effective_weight().to(h.dtype))
        return self.lm_head(h)

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Soft-capped logits ``c * tanh(h W^T / c)`` from hidden states ``[..., D]``."""
        return softcap(self.raw_logits(h), self.cfg.logit_softcap)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Soft-capped logits ``[B, T, vocab]``."""
        return self.logits_from_hidden(self.hidden_states(input_ids))

    def token_nll(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood in nats, float32 ``[B, T]``."""
        return softcapped_cross_entropy(self.raw_logits(self.hidden_states(input_ids)), target_ids,
                                        cap=self.cfg.logit_softcap, reduction="none", impl=self.cfg.loss_impl)

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats over all target tokens (the training loss)."""
        return softcapped_cross_entropy(self.raw_logits(self.hidden_states(input_ids)), target_ids,
                                        cap=self.cfg.logit_softcap, impl=self.cfg.loss_impl)
