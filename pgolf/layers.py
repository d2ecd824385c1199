"""Small building blocks of the model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CastedLinear(nn.Linear):
    """A bias-free linear layer whose weight stays fp32 and is cast to the input dtype at use.

    ``zero_init`` marks output projections that start at zero (official baseline).
    """

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))
