"""The official optimiser split: Muon (:mod:`pgolf.optim.muon`) for block matrices, Adam for the
embedding, an untied head and the control parameters, scheduled together
(:mod:`pgolf.optim.schedule`)."""
from __future__ import annotations

import torch
from torch import nn

from pgolf.config import OptimConfig, TrainConfig
from pgolf.model.gpt import GPT
from pgolf.model.roles import CONTROL, parameter_roles
from pgolf.optim.muon import Muon
from pgolf.optim.schedule import lr_multiplier, muon_momentum


NS_DTYPES: dict[str, torch.dtype | None] = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}


def use_fused_adam(setting: str, device: torch.device) -> bool:
    """``optim.adam_fused`` on ``device``: ``"cuda"`` fuses on CUDA only, ``"always"`` wherever this
    torch build has fused Adam kernels (CUDA, and the CPU since torch 2.4), ``"never"`` nowhere."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    if setting == "always":
        return device.type in _get_fused_kernels_supported_devices()
    return setting == "cuda" and device.type == "cuda"


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split parameters into the official optimiser groups by their role
    (:func:`pgolf.model.roles.parameter_roles`): ``embed`` (Adam, ``tied_embed_lr`` or
    ``embed_lr``), ``head`` (Adam, ``head_lr``), ``matrix`` (Muon, ``matrix_lr``) and ``scalar``
    (the ``control`` role: Adam, ``scalar_lr``)."""
    roles = parameter_roles(model)
    groups: dict[str, list[nn.Parameter]] = {"embed": [], "head": [], "matrix": [], "scalar": []}
    for name, p in model.named_parameters():
        groups["scalar" if roles[name] == CONTROL else roles[name]].append(p)
    return groups


class Optimizers:
    """The Adam + Muon set of one model, stepped and scheduled together."""

    def __init__(self, model: GPT, ocfg: OptimConfig, tcfg: TrainConfig):
        """Build the official split of ``model``'s parameters (:func:`parameter_groups`)."""
        self.ocfg, self.tcfg = ocfg, tcfg
        groups = parameter_groups(model)
        fused = {"fused": True} if use_fused_adam(ocfg.adam_fused, model.tok_emb.weight.device) else {}
        adam = dict(betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.adam_eps, **fused)
        token_lr = ocfg.tied_embed_lr if model.cfg.tie_embeddings else ocfg.embed_lr
        self.adam_embed = torch.optim.Adam([{"params": groups["embed"], "lr": token_lr, "base_lr": token_lr}], **adam)
        self.muon = Muon(groups["matrix"], lr=ocfg.matrix_lr, momentum=ocfg.muon_momentum,
                         backend_steps=ocfg.muon_backend_steps, schedule=ocfg.ns_schedule,
                         weight_decay=ocfg.muon_weight_decay, row_norm=ocfg.muon_row_norm, impl=tcfg.kernels,
                         ns_dtype=NS_DTYPES[ocfg.muon_ns_dtype], per_matrix=ocfg.muon_per_matrix)
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
        """Clip the global gradient norm (when ``grad_clip_norm > 0``), then step every optimiser."""
        if self.ocfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.ocfg.grad_clip_norm)
        for opt in self.all:
            opt.step()

    def zero_grad(self) -> None:
        """Drop every gradient (set to None)."""
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict]:
        """One state dict per optimiser, in a fixed order (for checkpoints)."""
        return [opt.state_dict() for opt in self.all]

    def load_state_dict(self, states: list[dict]) -> None:
        """Restore :meth:`state_dict`; raises ``ValueError`` when the optimiser count differs."""
        if len(states) != len(self.all):
            raise ValueError(f"checkpoint has {len(states)} optimiser states, this model needs {len(self.all)}")
        for opt, s in zip(self.all, states):
            opt.load_state_dict(s)
