"""SmearGate: an input-dependent, one-step mix of the previous token's embedding (RECORD_STACK B.1).

For ``t >= 1``: ``g_t = lam * sigmoid(w . e_t[0:W])`` and
``e~_t = e_t + g_t * e_{t-1} * [id_t != BOS]``; ``e~_0 = e_0``. ``w [1, W]`` and ``lam [1]`` start at
zero (the identity). The gate reads the *current* raw embedding, the smear uses the raw previous
one (not recursive). The BOS factor keeps the last token of one document out of the next
document's BOS in a packed row: without it the smear is a cross-document channel that no
attention mask closes. For the same reason nothing is smeared into the first token of a packed
evaluation piece (``starts``, :mod:`pgolf.model.documents`), which need not be a BOS.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig


class SmearGate(nn.Module):
    """See the module docstring; ``forward(e [B, T, D], input_ids [B, T], starts [B, T] | None) -> e~ [B, T, D]``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.window, self.bos_id = cfg.gate_window, cfg.bos_id
        self.weight = nn.Parameter(torch.zeros(1, cfg.gate_window, dtype=torch.float32))
        self.lam = nn.Parameter(torch.zeros(1, dtype=torch.float32))

    def forward(self, e: torch.Tensor, input_ids: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
        cur, prev = e[:, 1:], e[:, :-1]
        gate = self.lam.to(e.dtype) * torch.sigmoid(F.linear(cur[..., : self.window], self.weight.to(e.dtype)))
        keep = input_ids[:, 1:] != self.bos_id  # [B, T-1]
        if starts is not None:
            keep = keep & ~starts[:, 1:]
        keep = keep.to(e.dtype).unsqueeze(-1)  # [B, T-1, 1]
        return torch.cat((e[:, :1], cur + gate * prev * keep), dim=1)
