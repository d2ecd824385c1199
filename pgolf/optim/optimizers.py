"""The official optimiser split: Muon (:mod:`pgolf.optim.muon`) for block matrices, Adam for the
embedding, an untied head and the control parameters, scheduled together
(:mod:`pgolf.optim.schedule`); with the record's options: per-group Adam betas and decoupled
weight decay (AdamW), the EMA of the weights (:mod:`pgolf.optim.ema`), and gradient clipping of
each rank's local gradient before the cross-rank average.

Which gradient is clipped: with ``grad_clip_local`` (the record, RECORD_STACK B.10) the training
loop skips DDP's all-reduce, :meth:`Optimizers.step` clips each rank's *local* gradient to
``grad_clip_norm`` and only then averages over ranks; otherwise DDP has already averaged and the
*averaged* gradient is clipped. In one process the two are the same.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pgolf.config import OptimConfig, TrainConfig
from pgolf.config.features import parse_betas
from pgolf.model.gpt import GPT
from pgolf.model.roles import CONTROL, parameter_roles
from pgolf.optim.ema import EMA
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

        def adam(group: str, lr: float) -> torch.optim.Optimizer:
            """Adam for one group: its own betas, AdamW when it has weight decay."""
            betas = parse_betas(f"optim.{group}_betas", getattr(ocfg, f"{group}_betas"), (ocfg.beta1, ocfg.beta2))
            wd = getattr(ocfg, f"{group}_wd")
            kind, extra = (torch.optim.AdamW, {"weight_decay": wd}) if wd else (torch.optim.Adam, {})
            return kind([{"params": groups[group], "lr": lr, "base_lr": lr}], betas=betas, eps=ocfg.adam_eps,
                        **extra, **fused)

        token_lr = ocfg.tied_embed_lr if model.cfg.tie_embeddings else ocfg.embed_lr
        self.adam_embed = adam("embed", token_lr)
        self.muon = Muon(groups["matrix"], lr=ocfg.matrix_lr, momentum=ocfg.muon_momentum,
                         backend_steps=ocfg.muon_backend_steps, schedule=ocfg.ns_schedule,
                         weight_decay=ocfg.muon_weight_decay, row_norm=ocfg.muon_row_norm, impl=tcfg.kernels,
                         ns_dtype=NS_DTYPES[ocfg.muon_ns_dtype], per_matrix=ocfg.muon_per_matrix)
        for g in self.muon.param_groups:
            g["base_lr"] = ocfg.matrix_lr
        self.adam_scalar = adam("scalar", ocfg.scalar_lr)
        self.all: list[torch.optim.Optimizer] = [self.adam_embed, self.muon, self.adam_scalar]
        if groups["head"]:
            self.all.insert(1, adam("head", ocfg.head_lr))
        self.params = [p for opt in self.all for g in opt.param_groups for p in g["params"]]
        self.ema = EMA(model, ocfg.ema_decay) if ocfg.ema_decay > 0 else None

    @property
    def averages_gradients(self) -> bool:
        """True when :meth:`step` averages gradients over ranks itself (local clipping under
        ``torch.distributed``); the loop must then keep DDP from all-reducing."""
        return self.ocfg.grad_clip_local and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1

    def schedule(self, step: int, elapsed_s: float) -> float:
        """Set every group's lr and Muon's momentum for ``step``; returns the lr multiplier."""
        t = self.tcfg
        mul = lr_multiplier(step, elapsed_s, iterations=t.iterations, warmdown_iters=t.warmdown_iters,
                            max_wallclock_seconds=t.max_wallclock_seconds, warmdown_frac=t.warmdown_frac,
                            min_lr=t.min_lr)
        for g in self.muon.param_groups:
            g["momentum"] = muon_momentum(step, self.ocfg)
        for opt in self.all:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mul
        return mul

    def step(self) -> None:
        """Clip the global gradient norm (when ``grad_clip_norm > 0``; the local gradient first and
        then the rank average when :attr:`averages_gradients`), step every optimiser, update the EMA."""
        if self.ocfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.ocfg.grad_clip_norm)
        if self.averages_gradients:
            average_gradients(self.params)
        for opt in self.all:
            opt.step()
        if self.ema is not None:
            self.ema.update()

    def zero_grad(self) -> None:
        """Drop every gradient (set to None)."""
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict]:
        """One state dict per optimiser, in a fixed order, then the EMA's when on (for checkpoints)."""
        return [opt.state_dict() for opt in self.all] + ([self.ema.state_dict()] if self.ema is not None else [])

    def load_state_dict(self, states: list[dict]) -> None:
        """Restore :meth:`state_dict`; raises ``ValueError`` when the optimiser count differs."""
        n = len(self.all) + (self.ema is not None)
        if len(states) != n:
            raise ValueError(f"checkpoint has {len(states)} optimiser states, this model needs {n} "
                             f"(optim.ema_decay adds one)")
        for opt, s in zip(self.all, states):
            opt.load_state_dict(s)
        if self.ema is not None:
            self.ema.load_state_dict(states[-1])


@torch.no_grad()
def average_gradients(params: list[nn.Parameter]) -> None:
    """Replace every gradient by its mean over ranks (one all-reduce per dtype; a missing gradient
    counts as zeros, so every rank sends the same layout)."""
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
