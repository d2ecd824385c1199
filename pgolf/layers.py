"""Small building blocks of the model."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from triton_kernels.fake_quant import fake_quant_linear

if TYPE_CHECKING:
    from pgolf.qat import QATSpec


class CastedLinear(nn.Linear):
    """A bias-free linear layer whose weight stays fp32 and is cast to the input dtype at use.

    ``zero_init`` marks output projections that start at zero (official baseline).

    Quantisation-aware training (see :mod:`pgolf.qat`): ``qat`` holds the static quantiser settings
    (bits, scale rule, surrogate, impl) or ``None`` for a plain layer; it is set once by
    :func:`pgolf.qat.enable_qat` before compiling. The per-step state lives in two non-persistent
    buffers, ``qat_active`` (bool) and ``qat_temperature`` (float32), so ``torch.compile`` treats
    them as data and flipping them never recompiles or gets constant-folded. With ``qat`` set the
    forward is :func:`triton_kernels.fake_quant.fake_quant_linear`, which is a plain linear while
    ``qat_active`` is false.
    """

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        self.qat: QATSpec | None = None
        self.register_buffer("qat_active", torch.zeros((), dtype=torch.bool), persistent=False)
        self.register_buffer("qat_temperature", torch.ones((), dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.qat
        if q is None:
            return F.linear(x, self.weight.to(x.dtype))
        return fake_quant_linear(x, self.weight, bits=q.bits, rule=q.rule, percentile=q.percentile, sigma=q.sigma,
                                 surrogate=q.surrogate, temperature=self.qat_temperature, active=self.qat_active,
                                 impl=q.impl)
