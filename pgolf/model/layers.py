"""Small building blocks of the model: RMS norm, the linear layer and the embedding (both
QAT-capable, each declaring the role of its weight)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.model.roles import EMBED, MATRIX
from triton_kernels.fake_quant import fake_quant_linear, fake_quant_weight


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dimension, no learned weight."""
    return F.rms_norm(x, (x.size(-1),))


@dataclass(frozen=True)
class QATSpec:
    """Static fake-quant settings of one layer (see :func:`triton_kernels.fake_quant.fake_quant_linear`);
    set by :func:`pgolf.quant.qat.enable_qat`."""

    bits: int
    rule: str = "maxabs"
    percentile: float = 99.99984
    sigma: float = 12.85
    surrogate: str = "ste"
    impl: str = "auto"


class QATModule(nn.Module):
    """State shared by layers whose weight can train fake-quantised (see :mod:`pgolf.quant.qat`).

    ``qat`` holds the static quantiser settings (bits, scale rule, surrogate, impl) or ``None``
    for a plain layer; it is set once by :func:`pgolf.quant.qat.enable_qat` before compiling. The
    per-step state lives in two non-persistent buffers, ``qat_active`` (bool) and
    ``qat_temperature`` (float32), so ``torch.compile`` treats them as data and flipping them
    never recompiles or gets constant-folded.
    """

    def _init_qat(self) -> None:
        self.qat: QATSpec | None = None
        self.register_buffer("qat_active", torch.zeros((), dtype=torch.bool), persistent=False)
        self.register_buffer("qat_temperature", torch.ones((), dtype=torch.float32), persistent=False)


class CastedLinear(nn.Linear, QATModule):
    """A bias-free linear layer whose weight stays fp32 and is cast to the input dtype at use.

    ``zero_init`` marks output projections that start at zero (official baseline); ``role`` is the
    weight's parameter role (:mod:`pgolf.model.roles`: a block matrix, or an untied output head).
    With ``qat`` set the forward is :func:`triton_kernels.fake_quant.fake_quant_linear`, which is a
    plain linear while ``qat_active`` is false.
    """

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False, role: str = MATRIX):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        self.param_roles = {"weight": role}
        self._init_qat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.qat
        if q is None:
            return F.linear(x, self.weight.to(x.dtype))
        return fake_quant_linear(x, self.weight, bits=q.bits, rule=q.rule, percentile=q.percentile, sigma=q.sigma,
                                 surrogate=q.surrogate, temperature=self.qat_temperature, active=self.qat_active,
                                 impl=q.impl)


class QuantEmbedding(nn.Embedding, QATModule):
    """A token embedding whose table can train fake-quantised; a tied model also uses
    :meth:`effective_weight` as its output head, so lookup and head see the same ``fq(E)``."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__(num_embeddings, embedding_dim)
        self.param_roles = {"weight": EMBED}
        self._init_qat()

    def effective_weight(self) -> torch.Tensor:
        """The table as the model computes with it: ``fq(E)`` while QAT is active, else ``E``."""
        q = self.qat
        if q is None:
            return self.weight
        return fake_quant_weight(self.weight, bits=q.bits, rule=q.rule, percentile=q.percentile, sigma=q.sigma,
                                 surrogate=q.surrogate, temperature=self.qat_temperature, active=self.qat_active)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.effective_weight())
