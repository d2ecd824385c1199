"""Muon: momentum, then Newton-Schulz orthogonalisation, for the 2-D matrices of the model.

One step, for every parameter ``W`` (``rows x cols``) with gradient ``G`` (official ``train_gpt.py``):

    buf <- momentum * buf + G
    g   <- G + momentum * buf            (Nesterov; plain momentum uses g = buf)
    g   <- g / max(||g_r||_2, 1e-7)      per row r, only with row_norm=True (MuonEq-R, see below)
    O   <- newton_schulz(g)              ~ U V^T of g = U S V^T (triton_kernels.newton_schulz)
    W   <- W * (1 - lr * weight_decay)   decoupled, lr-scaled weight decay (0 by default)
    W   <- W - lr * max(1, rows/cols)^0.5 * O

``max(1, rows/cols)^0.5`` is the official scale correction: a tall matrix's orthogonal factor has
unit-norm columns, so its rows (what a unit of input sees) are shorter by ``(cols/rows)^0.5``.

Banks: parameters of one group with the same shape (and dtype and device) form a bank; their
momentum-updated gradients are stacked into ``(B, rows, cols)`` and orthogonalised by ONE
``newton_schulz`` call (the 9-layer baseline has 4 banks, the record stack 4, instead of 54 / 66
separate calls).

``row_norm=True`` is the "MuonEq-R" variant of the recent record stack: before Newton-Schulz each
row of the (Nesterov) momentum matrix -- the weights into one output unit -- is divided by its L2
norm, so every output unit gets the same share of the update's spectrum. The Frobenius
normalisation inside Newton-Schulz follows as usual.

Precision: Newton-Schulz runs in ``ns_dtype``; by default (:func:`default_ns_dtype`) bf16 on CUDA (what
the official code does: ``G.bfloat16()``) and the gradient's dtype elsewhere, so CPU runs and tests are deterministic and
run under the Triton interpreter (whose bf16 ``tl.dot`` is unusable). The orthogonalised update is
kept in ``ns_dtype`` (the official code all-reduces a bf16 buffer) and added to the parameter in its
own dtype. Momentum buffers have the gradient's dtype.

Batching: same-shape matrices are stacked into one batched Newton-Schulz call (a "bank"); with
``per_matrix=True`` every matrix gets its own 2-D call, as in the official loop, which in bf16 rounds
differently from a batched call (e.g. for tall ``mlp.fc`` matrices).

Distributed (``torch.distributed`` initialised; gradients already identical on every rank, e.g.
after DDP's all-reduce): every rank updates all momentum buffers (cheap, elementwise, and it keeps
the full optimizer state on every rank for checkpoints); the Newton-Schulz work is split: each bank's
stack is cut along its batch dimension into ``world_size`` contiguous chunks of ``ceil(B/world)``
matrices, rank ``r`` orthogonalises chunk ``r`` (``per_matrix``: matrix ``j`` of the step goes to rank
``j mod world_size``, the official assignment), and one ``all_gather`` of all chunks of all banks
(one flat buffer per rank) gives every rank every update. Every rank then applies identical updates;
the result equals single-process Muon up to floating-point differences between batched matmuls of
different batch sizes (tests/test_muon.py runs 2 gloo processes against 1 and allows 1e-6).

``lr``, ``momentum``, ``weight_decay`` are read from ``param_groups`` at every step, so schedules can
change them. ``state_dict()``/``load_state_dict()`` are ``torch.optim.Optimizer``'s: one
``momentum_buffer`` per parameter plus the groups' hyperparameters.
"""
from __future__ import annotations

import json
from typing import Iterable

import torch
import torch.distributed as dist

from triton_kernels.newton_schulz import Schedule, newton_schulz, ns_coefficients

ROW_NORM_EPS = 1e-7


def default_ns_dtype(device: torch.device, grad_dtype: torch.dtype) -> torch.dtype:
    """Newton-Schulz dtype when none is asked for: bf16 on CUDA (the official ``G.bfloat16()``),
    the gradient's dtype elsewhere (CPU runs deterministic in fp32)."""
    return torch.bfloat16 if device.type == "cuda" else grad_dtype


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz for 2-D parameters (see the module docstring).

    Args:
        params: 2-D parameters, or param groups (dicts) of them.
        lr: learning rate (the official baseline's ``MATRIX_LR`` is 0.04).
        momentum: momentum coefficient.
        nesterov: use Nesterov momentum ``g = G + momentum * buf``.
        backend_steps: Newton-Schulz iterations.
        schedule: ``"quintic"``, ``"polar_express"``, ``"polar_express_5"``, a list of ``(a, b, c)``
            triples, or that list as JSON text (the form ``OptimConfig.ns_schedule`` holds).
        weight_decay: decoupled weight decay, scaled by lr: ``W *= 1 - lr * weight_decay``.
        row_norm: normalise each row of the momentum matrix to unit L2 norm before Newton-Schulz.
        impl: ``newton_schulz`` dispatch: ``"auto"``, ``"triton"`` or ``"torch"``.
        ns_dtype: dtype of the Newton-Schulz computation; ``None`` = :func:`default_ns_dtype`.
        per_matrix: one Newton-Schulz call per matrix instead of one per same-shape bank.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 0.04, momentum: float = 0.95,
                 *, nesterov: bool = True, backend_steps: int = 5, schedule: Schedule = "quintic",
                 weight_decay: float = 0.0, row_norm: bool = False, impl: str = "auto",
                 ns_dtype: torch.dtype | None = None, per_matrix: bool = False):
        if not lr >= 0.0:
            raise ValueError(f"Muon lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Muon weight_decay must be >= 0, got {weight_decay}")
        if impl not in ("auto", "triton", "torch"):
            raise ValueError(f"Muon impl must be 'auto', 'triton' or 'torch', got {impl!r}")
        if isinstance(schedule, str) and schedule.lstrip().startswith("["):
            schedule = [tuple(t) for t in json.loads(schedule)]
        ns_coefficients(schedule, backend_steps)  # validates both
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, backend_steps=backend_steps,
                        schedule=schedule, weight_decay=weight_decay, row_norm=row_norm)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D parameters (use Adam for the rest), "
                                     f"got shape {tuple(p.shape)}")
        self.impl = impl
        self.ns_dtype = ns_dtype
        self.per_matrix = per_matrix

    def _dtype(self, ref: torch.Tensor) -> torch.dtype:
        return self.ns_dtype or default_ns_dtype(ref.device, ref.dtype)

    def _banks(self, group: dict) -> list[list[torch.Tensor]]:
        """The group's parameters that have a gradient, bucketed by (shape, dtype, device), in order
        (``per_matrix``: one bank per parameter)."""
        if self.per_matrix:
            return [[p] for p in group["params"] if p.grad is not None]
        banks: dict[tuple, list[torch.Tensor]] = {}
        for p in group["params"]:
            if p.grad is not None:
                banks.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
        return list(banks.values())

    def _momentum(self, group: dict, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Update the momentum buffers of ``params``; return the (Nesterov) directions."""
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            bufs.append(state["momentum_buffer"])
        momentum = group["momentum"]
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        return torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0

        # (group, bank params, chunk size, first owner rank, this rank's orthogonalised chunk or None):
        # matrix i of a bank is orthogonalised by rank owner + i // chunk.
        jobs = []
        for group in self.param_groups:
            for bank in self._banks(group):
                dirs = self._momentum(group, bank)
                chunk, owner = (1, len(jobs) % world) if self.per_matrix else (-(-len(bank) // world), 0)
                mine_at = rank - owner
                lo, hi = min(mine_at * chunk, len(bank)), min((mine_at + 1) * chunk, len(bank))
                mine = None
                if mine_at >= 0 and hi > lo:
                    G = torch.stack(dirs[lo:hi]) if hi - lo > 1 else dirs[lo]
                    if group["row_norm"]:
                        G = G / torch.linalg.vector_norm(G, dim=-1, keepdim=True).clamp_min(ROW_NORM_EPS)
                    mine = newton_schulz(G.to(self._dtype(G)), steps=group["backend_steps"],
                                         schedule=group["schedule"], impl=self.impl)
                    mine = mine if mine.dim() == 3 else mine.unsqueeze(0)
                    rows, cols = bank[0].shape
                    if rows > cols:
                        mine = mine * (rows / cols) ** 0.5
                jobs.append((group, bank, chunk, owner, mine))

        if not jobs:
            return loss
        if world > 1:
            updates = self._all_gather(jobs, world)
        else:
            updates = [list(mine.unbind(0)) for *_, mine in jobs]

        for (group, bank, *_), upd in zip(jobs, updates):
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(bank, 1.0 - lr * wd)
            torch._foreach_add_(bank, [u.to(p.dtype) for u, p in zip(upd, bank)], alpha=-lr)
        return loss

    def _all_gather(self, jobs: list, world: int) -> list[list[torch.Tensor]]:
        """Exchange every rank's chunks in one all_gather; return each bank's per-matrix updates."""
        ref = next(p for _, bank, *_ in jobs for p in bank)
        dtype = self._dtype(ref)
        sizes = [chunk * bank[0].numel() for _, bank, chunk, *_ in jobs]
        send = torch.zeros(sum(sizes), device=ref.device, dtype=dtype)
        offset = 0
        for (*_, mine), size in zip(jobs, sizes):
            if mine is not None:
                send[offset:offset + mine.numel()].view_as(mine).copy_(mine)
            offset += size
        recv = torch.empty(world, send.numel(), device=ref.device, dtype=dtype)
        dist.all_gather(list(recv.unbind(0)), send)
        updates, offset = [], 0
        for (_, bank, chunk, owner, _), size in zip(jobs, sizes):
            n = bank[0].numel()
            updates.append([recv[owner + i // chunk, offset + (i % chunk) * n: offset + (i % chunk + 1) * n].view_as(p)
                            for i, p in enumerate(bank)])
            offset += size
        return updates
