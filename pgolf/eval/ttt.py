"""Score-first per-document LoRA test-time training (``eval.mode`` ``ttt``; RECORD_STACK.md A.2).

The engine hands an adaptive predictor one chunk per row, the documents of a *group*
(``eval.batch_docs`` of them, longest first) side by side, each document's chunks in order.
:class:`LoraTTT` gives each document of a group a slot ``b`` with its own adapters at the places of
``ttt.places`` (``s = alpha / rank``, ``A_b (r, in)``, ``B_b (out, r)``, delta ``s (x A_b^T) B_b^T``):

========  ===================================  =======================================
place     input                                added to
========  ===================================  =======================================
q, k, v   the attention input ``n = rms(x)``   ``c_q`` / ``c_k`` / ``c_v`` outputs (before QK-norm)
o         ``n`` (not the attention output)     the attention output after ``proj``
mlp       the MLP input ``n' = rms(x)``        the MLP output (a bypass of the whole MLP)
head      the final hidden state ``h``         the raw logits, before the softcap
========  ===================================  =======================================

The adapters are forward hooks on the model's own modules (the adapted forward is the model's
forward, never a copy of it); they exist only while :class:`LoraTTT` computes. For each step:
``log_probs`` scores the chunk with the current adapters; the engine accumulates the NLL; then
``update`` back-propagates ``L = sum_b mean_t nll_{b,t}`` over the rows that are not their
document's last chunk into the adapters and takes one AdamW step (beta1 = 0,
:func:`triton_kernels.lora.lora_adamw_step_`). A new group starts with ``B = 0``, a zero second
moment and step, and ``A`` kept (``ttt.warm_start_a``) or drawn afresh.

Depth recurrence: a looped block runs several times per forward, and each pass has its own adapters
(one per *virtual* layer, as the record: its 11 blocks with 3..5 looped twice more carry 17 sets),
named by the virtual layer; a module's hook takes its adapters in the order the forward runs them.

Global SGD phases (``ttt.phases = K``, A.2.7): boundary ``k`` is ``floor(phase_docs k / K)``
documents in group order; phase ``k`` comes after the group ``g_k`` where the count reaches it,
trains every model weight on the tokens of the first ``boundary_k`` documents (cumulative: each
phase retrains the earlier ones), in chunks of ``ttt.phase_chunk_tokens`` (the last one skipped),
``c``-th chunk at ``lr_c = phase_lr (1 + cos(pi c / (N_c - 1))) / 2``, SGD with momentum, the
global gradient norm clipped; then a fresh adapter set. The tokens are those the predictor was
shown (inputs and scored targets), so only scored documents are ever trained on.

Several ranks: a rank joins phase ``k`` after its last group ``<= g_k`` and before its first group
``> g_k`` (a rank with no group joins them all at :meth:`LoraTTT.finish`); the collectives then
wait until every rank has scored every document of the groups ``<= g_k``. Each phase starts with an
all-reduce in which the ranks agree to run it: a rank that ran out of the eval time budget
(:meth:`LoraTTT.finish` with ``out_of_time``; the engine scores its remaining chunks with the plain
model) votes no, and then no rank runs that phase or any later one (counted in
``phases_cancelled``), so no rank ever waits for one that stopped adapting. The seen tokens are
all-reduced (MAX) and the gradients summed, the chunk's sequences dealt round-robin to ranks.
The totals do not depend on the number of ranks when ``ttt.warm_start_a`` is off (each group
draws its ``A`` from its own seed; every rank applies the same phase updates): bit for bit when a
phase chunk holds at most two ``window``-long sequences (a sum of two floats does not depend on
its order), up to float summation order otherwise. With ``warm_start_a`` on they do, by design:
a slot's ``A`` carries what it learned on the earlier groups *of its rank* (the record's A also
depends on which batches its rank took, RECORD_STACK.md A.2.5 and A.2.8; here the groups are dealt
statically, so a run is reproducible for a given number of ranks).

Faults: a document whose adapters (or scores) turn non-finite falls back to the plain model for
its remaining chunks (its adapters are zeroed, the delta is exactly 0), counted in
:attr:`LoraTTT.counts`.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pgolf.config import TTTConfig
from pgolf.config.validate import ttt_places
from pgolf.eval.geometry import Plan
from pgolf.eval.predictor import ChunkBatch, ScoredBatch
from pgolf.eval.schedule import Schedule
from pgolf.model.gpt import GPT
from pgolf.util.device import autocast_for
from triton_kernels.lora import LoraLayout, lora_adamw_step_, lora_linear, lora_reset_


class _TiedHead(nn.Module):
    """The tied output head ``h E^T`` as a module, so the head adapter can hook it like an untied one."""

    def __init__(self, emb: nn.Module):
        super().__init__()
        self.emb = emb

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.emb.effective_weight().to(h.dtype))


def adapter_sites(model: GPT, places: list[str]) -> list[tuple[str, nn.Module | None, int, int]]:
    """``(name, module, in, out)`` of every adapter: the blocks' in the order the forward runs them, one
    set per virtual layer ``v`` (a looped block appears once per pass, named by ``v``), then the head
    (its module is None for a tied head)."""
    d = model.cfg.model_dim
    encoder, decoder = model.orders[bool(model.cfg.num_loops) and bool(model.looping)]
    sites = []
    for v, i in enumerate(encoder + decoder):
        attn, mlp = model.blocks[i].attn, model.blocks[i].mlp
        for place, module, n_out in (("q", attn.c_q, attn.c_q.out_features), ("k", attn.c_k, attn.c_k.out_features),
                                     ("v", attn.c_v, attn.c_v.out_features), ("o", attn, d), ("mlp", mlp, d)):
            if place in places:
                sites.append((f"{place}{v}", module, d, n_out))
    if "head" in places:
        sites.append(("head", model.lm_head, d, model.cfg.vocab_size))
    return sites


class LoraTTT:
    """The TTT predictor of one rank (module docstring). ``plan`` and ``schedule`` are the engine's
    (:func:`pgolf.eval.engine.schedule_of` with ``stateless=False``); the model is copied when
    phases train its weights, so the caller's model never changes."""

    stateless = False

    def __init__(self, model: GPT, cfg: TTTConfig, plan: Plan, schedule: Schedule, device: torch.device | str,
                 *, rank: int = 0, world_size: int = 1, window: int = 2048):
        self.cfg, self.device = cfg, torch.device(device)
        places = ttt_places(cfg.places)
        if not 1 <= cfg.rank <= model.cfg.model_dim:
            raise ValueError(f"ttt.rank={cfg.rank} must be in 1..{model.cfg.model_dim} (the adapted layers' input "
                             f"width, model.model_dim)")
        self.model = copy.deepcopy(model) if cfg.phases else model
        self.model.eval()
        self.sites = adapter_sites(self.model, places)
        self.layout = LoraLayout(tuple((cfg.rank, n_in, n_out) for _, _, n_in, n_out in self.sites))
        self.scale = cfg.alpha / cfg.rank
        self.window, self.rank, self.world_size = window, rank, world_size
        self.plan, self.schedule = plan, schedule
        self.counts = {"nonfinite_docs": 0, "nonfinite_tokens": 0,  # adapters gone non-finite: plain scores
                       "phases": 0, "phase_steps": 0, "phases_cancelled": 0}
        self._index_schedule()
        width = max((len(schedule.steps[g[0]].lane) for g in schedule.groups), default=1)
        self.flat = torch.zeros(width, self.layout.numel, device=self.device, requires_grad=True)
        self.v = torch.zeros(width, self.layout.numel, device=self.device)
        self.step = torch.zeros(width, dtype=torch.int64, device=self.device)
        self.seen = torch.full((int(plan.stop.max()) if len(plan) else 1,), -1, dtype=torch.int32)
        self._fresh_a(0)
        self._pos = -1  # index into self.my_groups of the group being scored (-1: none yet)
        self.steps_left = 0

    def _index_schedule(self) -> None:
        s, plan = self.schedule, self.plan
        self.my_groups = s.groups_of_rank(self.rank, self.world_size)
        self.group_lanes = [s.steps[g[0]].lane for g in s.groups]
        last = np.zeros(int(plan.lane.max()) + 1 if len(plan) else 0, np.int64)
        last[plan.lane] = s.seq[np.arange(len(plan))]  # chunks are in stream order: the last write is the last chunk
        self.last_seq = torch.from_numpy(last)
        first = np.full(len(last), -1, np.int64)
        first[plan.lane[::-1]] = np.arange(len(plan))[::-1]
        self.span = np.stack([plan.ctx[first], plan.stop[np.searchsorted(plan.lane, np.arange(len(last)), "right") - 1]],
                             1) if len(plan) else np.zeros((0, 2), np.int64)
        docs = np.cumsum([len(x) for x in self.group_lanes])
        k_total = self.cfg.phases
        self.phase_after: list[tuple[int, int]] = []  # (group g_k, boundary documents)
        for k in range(1, k_total + 1):
            bound = self.cfg.phase_docs * k // k_total
            g = int(np.searchsorted(docs, bound)) if bound else -1
            if bound and g < len(docs) - 1:  # a phase after the last group would change nothing scored
                self.phase_after.append((g, bound))

    def _fresh_a(self, event: int) -> None:
        gen = torch.Generator().manual_seed(self.cfg.lora_seed * 1_000_003 + event)
        with torch.no_grad():
            self.flat.copy_(self.layout.init(self.flat.shape[0], generator=gen).to(self.device))

    def _start_group(self) -> None:
        g = self.my_groups[self._pos]
        lanes = self.group_lanes[g]
        self.slot_of = {int(lane): i for i, lane in enumerate(lanes)}
        self.steps_left = len(self.schedule.groups[g])
        self.fallen = torch.zeros(len(lanes), dtype=torch.bool)
        if not self.cfg.warm_start_a:
            self._fresh_a(1_000 + g)
        with torch.no_grad():
            lora_reset_(self.flat.data, self.v, self.step, docs=torch.ones_like(self.step, dtype=torch.bool),
                        keep=self.layout.a_numel, impl=self.cfg.impl)

    @contextmanager
    def _adapted(self, views: list[tuple[torch.Tensor, torch.Tensor]], lengths: torch.Tensor,
                 head_lengths: torch.Tensor) -> Iterator[None]:
        """Hooks adding every adapter's delta to its module's output, a looped module's ``k``-th call
        getting its ``k``-th adapter; a tied head becomes a module meanwhile. For one forward."""
        handles, tied = [], None
        impl = self.cfg.impl
        passes: dict[nn.Module, list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        for (name, module, _, _), (A, B) in zip(self.sites, views):
            if name == "head" and module is None:
                tied = self.model.lm_head = _TiedHead(self.model.tok_emb)
                module = tied
            passes.setdefault(module, []).append((name, A, B, head_lengths if name == "head" else lengths))

        used = dict.fromkeys(passes, 0)
        changed = ("the model's layer order is not the one the predictor was built for (model.set_looping since?): "
                   "build the TTT predictor for the looping state it scores with")

        def hook(calls: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]):
            def add(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
                if used[module] == len(calls):
                    raise RuntimeError(f"LoraTTT: {type(module).__name__} ran more than {len(calls)} time(s): {changed}")
                _, A, B, n = calls[used[module]]
                used[module] += 1
                return out + lora_linear(args[0], A, B, scale=self.scale, lengths=n, impl=impl).to(out.dtype)
            return add

        try:
            for module, calls in passes.items():
                handles.append(module.register_forward_hook(hook(calls)))
            yield
            short = [f"{calls[0][0]}: {used[m]} of {len(calls)}" for m, calls in passes.items() if used[m] < len(calls)]
            if short:
                raise RuntimeError(f"LoraTTT: adapted modules ran fewer times than they have adapters ({short[0]}): "
                                   f"{changed}")
        finally:
            for h in handles:
                h.remove()
            if tied is not None:
                self.model.lm_head = None

    def _forward(self, batch: ChunkBatch, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = batch.rows, batch.cols
        counts = torch.bincount(rows, minlength=len(batch.lengths))
        j = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
        views = self.layout.views(self.flat.index_select(0, slots.to(self.device)))
        with autocast_for(self.device), self._adapted(views, batch.lengths, counts):
            h = self.model.hidden_states(batch.inputs)[rows, cols]
            hs = h.new_zeros(len(batch.lengths), int(counts.max()), h.shape[-1])
            hs[rows, j] = h
            return self.model.logits_from_hidden(hs)[rows, j].float().log_softmax(-1), h

    def _slots(self, batch: ChunkBatch) -> torch.Tensor:
        self.current_group()
        lanes = batch.lanes.tolist()
        if any(lane not in self.slot_of for lane in lanes):
            raise ValueError(f"LoraTTT got documents {lanes[:5]} outside its current group: the predictor must be "
                             f"built from the schedule the engine runs (same plan, eval.batch_docs, rank)")
        return torch.tensor([self.slot_of[lane] for lane in lanes], dtype=torch.int64)

    def log_probs(self, batch: ChunkBatch) -> torch.Tensor:
        return self.log_probs_and_hidden(batch)[0]

    def log_probs_and_hidden(self, batch: ChunkBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Full log-probabilities and the adapted model's final hidden states at the scored positions
        (what a neural cache stacked on TTT stores: ``ttt+cache``)."""
        slots = self._slots(batch)
        lp, h = self._forward(batch, slots)
        bad_rows = torch.unique(batch.rows[~torch.isfinite(lp.detach()).all(1)]).cpu()
        if len(bad_rows):
            self._fall_back(slots[bad_rows])
            lp, h = self._forward(batch, slots)
        fallen_rows = self.fallen[slots]
        self.counts["nonfinite_tokens"] += int(fallen_rows[batch.rows.cpu()].sum())
        return lp, h

    def _fall_back(self, slots: torch.Tensor) -> None:
        """Zero the adapters (A too) and optimizer state of ``slots``: their delta is exactly 0 from now on."""
        new = slots[~self.fallen[slots]]
        self.counts["nonfinite_docs"] += len(torch.unique(new))
        self.fallen[slots] = True
        docs = torch.zeros_like(self.step, dtype=torch.bool)
        docs[slots.to(self.device)] = True
        with torch.no_grad():
            lora_reset_(self.flat.data, self.v, self.step, docs=docs, keep=self.layout.a_numel,
                        init=torch.zeros_like(self.flat.data), impl="torch")

    def current_group(self) -> int:
        """The group being scored; at the first call, after the phases due before this rank's first group."""
        if self._pos < 0:
            self._enter(0)
        return self.my_groups[self._pos]

    def update(self, scored: ScoredBatch) -> None:
        self._remember(scored.batch, scored.targets)
        self._train(scored.batch, scored.nll)
        self.steps_left -= 1
        if self.steps_left == 0:
            self._enter(self._pos + 1)

    def finish(self, *, out_of_time: bool) -> None:
        """The engine's last call on this rank: after its last step, or when the time budget ran out and
        the plain model scores the rest (``out_of_time``). Joins the phases this rank still owes (a rank
        without groups owes them all), or, out of time, votes them off on every rank (module docstring)."""
        if out_of_time:
            if self.phase_after:
                self._agree(out_of_time=True)
        else:
            self._enter(len(self.my_groups))

    def _train(self, batch: ChunkBatch, nll: torch.Tensor) -> None:
        """One AdamW step on ``sum_b mean_t nll`` over the rows that are not their document's last chunk."""
        slots = self._slots(batch)
        row_seq = batch.seqs[torch.cumsum(torch.bincount(batch.rows, minlength=len(slots)), 0) - 1].cpu()
        train = (row_seq != self.last_seq[batch.lanes.cpu()]) & ~self.fallen[slots]
        if bool(train.any()):
            rows = batch.rows.cpu()
            per_row = torch.zeros(len(slots), dtype=nll.dtype, device=nll.device).index_add(0, batch.rows, nll)
            n = torch.bincount(rows, minlength=len(slots)).clamp(min=1).to(per_row)
            loss = (per_row / n)[train.to(per_row.device)].sum()
            grad, = torch.autograd.grad(loss, self.flat)  # the adapters only; the model's weights get nothing
            d = len(self.fallen)
            lora_adamw_step_(self.flat.data[:d], grad[:d], self.v[:d], self.step[:d], lr=self.cfg.lr,
                             beta2=self.cfg.adam_beta2, eps=self.cfg.eps, weight_decay=self.cfg.weight_decay,
                             impl=self.cfg.impl)
            bad = ~torch.isfinite(self.flat.data[:d]).all(1).cpu()
            if bool(bad.any()):
                self._fall_back(torch.nonzero(bad).flatten())

    def _remember(self, batch: ChunkBatch, targets: torch.Tensor) -> None:
        """Keep the tokens shown so far (inputs and scored targets): the only data a phase trains on."""
        self.seen[batch.positions.cpu()] = targets.cpu().to(torch.int32)
        ctx, lengths, inputs = batch.context_start.tolist(), batch.lengths.tolist(), batch.inputs.cpu()
        for b, (c, n) in enumerate(zip(ctx, lengths)):
            self.seen[c:c + n] = inputs[b, :n].to(torch.int32)

    def _enter(self, pos: int) -> None:
        """Run the phases due before ``my_groups[pos]`` (all that remain past the last), then start it."""
        nxt = self.my_groups[pos] if pos < len(self.my_groups) else math.inf
        while self.phase_after and nxt > self.phase_after[0][0] and self._agree(out_of_time=False):
            _, bound = self.phase_after.pop(0)
            self._phase(bound)
        self._pos = pos
        if pos < len(self.my_groups):
            self._start_group()

    def _agree(self, *, out_of_time: bool) -> bool:
        """Whether every rank runs the next phase: no when any rank is out of time, and then no phase runs
        any more on any rank (one MAX all-reduce of the votes, also when this rank votes no)."""
        vote = torch.tensor([int(out_of_time)], dtype=torch.int32, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        if int(vote.item()):
            self.counts["phases_cancelled"] += len(self.phase_after)
            self.phase_after.clear()
            return False
        return True

    def _phase(self, bound: int) -> None:
        """One global SGD phase on the first ``bound`` documents in group order (module docstring)."""
        cfg, model = self.cfg, self.model
        seen = self.seen.to(self.device, copy=True)
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(seen, op=dist.ReduceOp.MAX)
        seen = seen.cpu()
        lanes = np.concatenate(self.group_lanes)[:bound]
        stream = torch.cat([seen[a:z] for a, z in self.span[lanes]]).to(torch.int64)
        if bool((stream < 0).any()):
            raise RuntimeError("a TTT phase would train on tokens no rank has scored yet (a scheduling bug)")
        ct = cfg.phase_chunk_tokens
        n_chunks = -(-(len(stream) - 1) // ct)
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
            p.grad = torch.zeros_like(p)  # a rank without sequences in a chunk still all-reduces zeros
        opt = torch.optim.SGD(params, lr=cfg.phase_lr, momentum=cfg.phase_momentum)
        try:
            for c in range(n_chunks - 1):  # the last chunk is skipped (as the record)
                for group in opt.param_groups:
                    group["lr"] = cfg.phase_lr * 0.5 * (1 + math.cos(math.pi * c / (n_chunks - 1)))
                piece = stream[c * ct:(c + 1) * ct + 1].to(self.device)
                seqs = [(s, min(s + self.window, len(piece) - 1)) for s in range(0, len(piece) - 1, self.window)]
                opt.zero_grad(set_to_none=False)
                for i, (a, z) in enumerate(seqs):
                    if i % self.world_size != self.rank:
                        continue
                    with autocast_for(self.device):
                        loss = model(piece[None, a:z], piece[None, a + 1:z + 1]) * (z - a)
                    loss.backward()
                grads = [p.grad for p in params]
                if distributed:
                    for gr in grads:
                        dist.all_reduce(gr, op=dist.ReduceOp.SUM)
                for gr in grads:
                    gr.div_(len(piece) - 1)  # the mean over the chunk's tokens on all ranks
                if cfg.phase_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.phase_clip)
                opt.step()
                self.counts["phase_steps"] += 1
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        self.counts["phases"] += 1
        self._fresh_a(1 + self.counts["phases"])


def make_ttt(model: GPT, cfg: TTTConfig, plan: Plan, device: torch.device | str, *, batch_docs: int,
             window: int, rank: int = 0, world_size: int = 1) -> LoraTTT:
    """A :class:`LoraTTT` for the schedule the engine runs on ``plan`` with ``batch_docs`` lanes."""
    from pgolf.eval.schedule import build_schedule

    schedule = build_schedule(plan, stateless=False, batch_tokens=1, batch_lanes=batch_docs)
    return LoraTTT(model, cfg, plan, schedule, device, rank=rank, world_size=world_size, window=window)
