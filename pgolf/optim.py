"""The official optimiser split and its schedules.

- Muon (:mod:`pgolf.muon`) for 2-D block matrices, lr ``matrix_lr``, momentum warmed up linearly
  from ``muon_momentum_warmup_start`` to ``muon_momentum`` over ``muon_momentum_warmup_steps``;
- Adam (betas ``beta1, beta2``) for the embedding (``tied_embed_lr`` when tied, else
  ``embed_lr``), an untied head (``head_lr``) and scalars/gains (``scalar_lr``).

Every group's lr is ``base_lr * lr_multiplier(...)``: 1 until the warmdown, then linear to 0 over
the last ``warmdown_iters`` steps — or, with a wallclock cap, over the last
``warmdown_iters * (mean step time)`` seconds before the cap (the official rule).
"""
from __future__ import annotations

import torch

from .config import OptimConfig, TrainConfig
from .model import GPT, parameter_groups
from .muon import Muon


def lr_multiplier(step: int, elapsed_s: float, *, iterations: int, warmdown_iters: int,
                  max_wallclock_seconds: float) -> float:
    """Learning-rate multiplier at ``step`` after ``elapsed_s`` seconds of training.

    Without a cap: ``(iterations - step) / warmdown_iters`` inside the last ``warmdown_iters``
    steps. With a cap ``C``: with ``w = warmdown_iters * elapsed_s / step`` the projected warmdown
    duration, the multiplier is ``max(C - elapsed_s, 0) / w`` once that is below 1.
    """
    if warmdown_iters <= 0:
        return 1.0
    if max_wallclock_seconds <= 0:
        if max(iterations - warmdown_iters, 0) <= step < iterations:
            return max((iterations - step) / warmdown_iters, 0.0)
        return 1.0
    warmdown_s = warmdown_iters * elapsed_s / max(step, 1)
    remaining_s = max(max_wallclock_seconds - elapsed_s, 0.0)
    return remaining_s / max(warmdown_s, 1e-9) if remaining_s <= warmdown_s else 1.0


def muon_momentum(step: int, ocfg: OptimConfig) -> float:
    """Linear warmup of Muon's momentum over ``muon_momentum_warmup_steps``."""
    frac = min(step / ocfg.muon_momentum_warmup_steps, 1.0) if ocfg.muon_momentum_warmup_steps > 0 else 1.0
    return (1 - frac) * ocfg.muon_momentum_warmup_start + frac * ocfg.muon_momentum


class Optimizers:
    """The Adam + Muon set of one model, stepped and scheduled together."""

    def __init__(self, model: GPT, ocfg: OptimConfig, tcfg: TrainConfig):
        self.ocfg, self.tcfg = ocfg, tcfg
        groups = parameter_groups(model)
        fused = {"fused": True} if model.tok_emb.weight.is_cuda else {}
        adam = dict(betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.adam_eps, **fused)
        token_lr = ocfg.tied_embed_lr if model.cfg.tie_embeddings else ocfg.embed_lr
        self.adam_embed = torch.optim.Adam([{"params": groups["embed"], "lr": token_lr, "base_lr": token_lr}], **adam)
        self.muon = Muon(groups["matrix"], lr=ocfg.matrix_lr, momentum=ocfg.muon_momentum,
                         backend_steps=ocfg.muon_backend_steps, schedule=ocfg.ns_schedule,
                         weight_decay=ocfg.muon_weight_decay, row_norm=ocfg.muon_row_norm, impl=tcfg.kernels)
        for g in self.muon.param_groups:
            g["base_lr"] = ocfg.matrix_lr
        self.adam_scalar = torch.optim.Adam(
            [{"params": groups["scalar"], "lr": ocfg.scalar_lr, "base_lr": ocfg.scalar_lr}], **adam)
        self.all: list[torch.optim.Optimizer] = [self.adam_embed, self.muon, self.adam_scalar]
        if groups["head"]:
            self.all.insert(1, torch.optim.Adam(
                [{"params": groups["head"], "lr": ocfg.head_lr, "base_lr": ocfg.head_lr}], **adam))
        self.params = [p for opt in self.all for g in opt.param_groups for p in g["params"]]

    def schedule(self, step: int, elapsed_s: float) -> float:
        """Set every group's lr and Muon's momentum for ``step``; returns the lr multiplier."""
        mul = lr_multiplier(step, elapsed_s, iterations=self.tcfg.iterations,
                            warmdown_iters=self.tcfg.warmdown_iters,
                            max_wallclock_seconds=self.tcfg.max_wallclock_seconds)
        for g in self.muon.param_groups:
            g["momentum"] = muon_momentum(step, self.ocfg)
        for opt in self.all:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mul
        return mul

    def step(self) -> None:
        if self.ocfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.ocfg.grad_clip_norm)
        for opt in self.all:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.all]

    def load_state_dict(self, states: list[dict]) -> None:
        if len(states) != len(self.all):
            raise ValueError(f"checkpoint has {len(states)} optimiser states, this model needs {len(self.all)}")
        for opt, s in zip(self.all, states):
            opt.load_state_dict(s)
