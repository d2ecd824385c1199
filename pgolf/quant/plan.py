"""Which tensor gets which bits: the one decision export and QAT share.

Policy (from :class:`pgolf.config.QuantConfig` and the parameter roles of :mod:`pgolf.model.roles`):

* a tensor is a candidate only if it is a parameter whose role is ``matrix``, ``embed`` or
  ``head`` (``control`` gains, scales, residual mixes and skip weights always stay float, as in
  the official exporter; buffers and non-float tensors pass through), 2-D, float, and has more than
  ``keep_float_max_numel`` elements;
* a candidate takes the bits of the *first* ``policy`` pattern that is a substring of its name
  (``"mlp=5,attn=6,tok_emb=8"``), else ``bits``; a policy value of 0 keeps it float.
"""
from __future__ import annotations

from typing import Mapping

import torch

from pgolf.config import QuantConfig, parse_policy, parse_sigma_policy
from pgolf.model.roles import EMBED, HEAD, MATRIX

QUANTISED_ROLES = (MATRIX, EMBED, HEAD)


def tensor_bits(name: str, tensor: torch.Tensor, qcfg: QuantConfig, role: str | None) -> int:
    """Bits for one named tensor of parameter ``role`` (None: not a parameter) under ``qcfg``
    (0 = keep float); see the module docstring."""
    if role not in QUANTISED_ROLES or not tensor.is_floating_point() or tensor.ndim != 2:
        return 0
    if tensor.numel() <= qcfg.keep_float_max_numel:
        return 0
    for pattern, bits in parse_policy(qcfg.policy):
        if pattern in name:
            return bits
    return qcfg.bits


def plan(state_dict: Mapping[str, torch.Tensor], qcfg: QuantConfig, roles: Mapping[str, str]) -> dict[str, int]:
    """``{name: bits}`` for every tensor of ``state_dict`` (0 = stays float / passes through);
    ``roles`` as :func:`pgolf.model.roles.parameter_roles` gives them."""
    return {name: tensor_bits(name, t, qcfg, roles.get(name)) for name, t in state_dict.items()}


def tensor_sigma(name: str, qcfg: QuantConfig) -> float:
    """The ``sigma`` scale rule's k for one tensor: the first ``sigma_policy`` pattern that is a
    substring of its name (``"attn=13,mlp=11.5,tok_emb=14"``), else ``clip_sigma``."""
    for pattern, sigma in parse_sigma_policy(qcfg.sigma_policy):
        if pattern in name:
            return sigma
    return qcfg.clip_sigma
