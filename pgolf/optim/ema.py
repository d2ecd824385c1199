"""Exponential moving average of the weights (RECORD_STACK B.12).

After every optimiser step ``theta_bar <- d * theta_bar + (1 - d) * theta`` in fp32, for every
floating-point tensor of the model's state dict, starting from the initial weights. At the end of
training the averaged weights (cast back to each tensor's dtype) replace the live ones, so they are
what gets evaluated and exported. The record uses ``d = 0.9965`` (half-life ~198 steps).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class EMA:
    """The fp32 running average of ``model``'s floating-point state (module docstring)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.model, self.decay = model, decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self) -> None:
        """``theta_bar <- d theta_bar + (1 - d) theta`` for every tracked tensor."""
        live = self.model.state_dict()
        for name, avg in self.shadow.items():
            avg.mul_(self.decay).add_(live[name].detach().float(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Load the averaged weights into the model (each in its own dtype)."""
        live = self.model.state_dict()
        for name, avg in self.shadow.items():
            live[name].copy_(avg.to(live[name].dtype))

    def state_dict(self) -> dict[str, Any]:
        """A copy of the averages (later updates do not change it)."""
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match this model's tensors")
        for name, avg in state["shadow"].items():
            self.shadow[name].copy_(avg)
