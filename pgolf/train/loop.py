"""The training loop: micro-batched steps, schedules, periodic validation, checkpoints, signals.

One process on a CPU or a GPU, or ``torchrun`` with any number of processes and nodes. The global
batch is independent of the world size: each optimiser step consumes ``train_batch_tokens`` tokens
split over ``world_size * grad_accum_steps`` micro-batches.

The loop knows nothing of evaluation or export: validation, checkpoint writing and per-step
settings (QAT) come in as :class:`LoopHooks`, so :mod:`pgolf.pipeline` composes them. Never lose
work: :meth:`Trainer.save` hands the full training state (model, optimisers, step, training time,
loader identity, RNG of every rank) to the checkpoint hook every ``checkpoint_every`` steps, at the
end and when SIGTERM/SIGINT arrives; a non-finite loss, or weights that turned non-finite by
the time a checkpoint is due, stop the run naming the step, and the last checkpoint (always one
with finite weights) is left as it is.
"""
from __future__ import annotations

import copy
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from pgolf.config import TrainConfig
from pgolf.data.loader import TokenLoader
from pgolf.model.gpt import GPT
from pgolf.optim.optimizers import Optimizers
from pgolf.train.checkpoint import non_finite_tensors, rng_state, set_rng_state
from pgolf.train.runlog import RunLog
from pgolf.train.signals import SignalFlag
from pgolf.util.device import DistEnv, all_reduce_mean, any_rank, autocast_for, sync
from pgolf.util.progress import progress


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, missing data); the message says why and where."""


class Interrupted(SystemExit):
    """SIGTERM/SIGINT arrived; a checkpoint was saved before leaving."""


def _nothing(*args: Any) -> None:
    return None


@dataclass
class LoopHooks:
    """What the loop calls out to.

    * ``validate(step, train_ms, full)``: score the model (periodically on a capped subset,
      ``full=False``); the loop never looks at the result;
    * ``checkpoint(state)``: persist the training state (called on rank 0 only);
    * ``before_step(step, elapsed_s)``: per-step settings that are not the optimiser's (QAT).
    """

    validate: Callable[[int, float, bool], Any] = _nothing
    checkpoint: Callable[[dict[str, Any]], None] = _nothing
    before_step: Callable[[int, float], None] = _nothing
    checkpoint_path: Path | None = None  # where ``checkpoint`` writes, for messages


@dataclass(frozen=True)
class LoopResult:
    """Where training stopped: ``step`` optimiser steps in ``train_ms`` of timed training."""

    step: int
    train_ms: float
    stop_reason: str  # "iterations" | "wallclock_cap"


class Trainer:
    """Trains ``model`` (``forward`` = the module that computes the loss, e.g. compiled or DDP) with
    ``opts`` on batches of ``loader``, per ``tcfg``."""

    def __init__(self, model: torch.nn.Module, forward: torch.nn.Module, opts: Optimizers, loader: TokenLoader,
                 tcfg: TrainConfig, *, env: DistEnv, device: torch.device, grad_accum: int, log: RunLog,
                 hooks: LoopHooks):
        self.model, self.forward, self.opts, self.loader = model, forward, opts, loader
        self.tcfg, self.env, self.device, self.grad_accum = tcfg, env, device, grad_accum
        self.log, self.hooks = log, hooks
        self.step, self.train_ms = 0, 0.0

    def train_step(self, step: int) -> torch.Tensor:
        """Forward/backward of every micro-batch of ``step``; returns the mean loss over ranks."""
        t, env = self.tcfg, self.env
        self.opts.zero_grad()
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = self.loader.next_batch(step, global_tokens=t.train_batch_tokens, seq_len=t.seq_len,
                                          grad_accum_steps=self.grad_accum, micro_step=micro)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            # Local gradient clipping averages in the optimiser step: DDP must not all-reduce then.
            no_sync = env.distributed and (micro < self.grad_accum - 1 or self.opts.averages_gradients)
            with (self.forward.no_sync() if no_sync else nullcontext()), autocast_for(self.device):
                loss = self.forward(x, y)
            (loss * (1.0 / self.grad_accum)).backward()  # the official grad_scale
            loss_sum += loss.detach()
        return all_reduce_mean(loss_sum / self.grad_accum, env)

    def warm_up_compile(self) -> None:
        """Run ``warmup_steps`` real steps on training batches so ``torch.compile`` compiles, then
        restore the exact initial model and optimiser state (validation data is never touched).

        A model with depth recurrence (``model.num_loops``) runs them once per topology, unlooped
        then looped (RECORD_STACK.md B.11), so the switch at ``loop_enable_frac`` finds both
        compiled and never compiles inside the timed region; its loop switch is restored too.
        """
        init_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        init_opt = self.opts.state_dict()
        looped = isinstance(self.model, GPT) and bool(self.model.cfg.num_loops)
        init_looping = bool(self.model.looping) if looped else None
        topologies = (False, True) if looped else (None,)
        total = self.tcfg.warmup_steps * len(topologies)
        for phase, topology in enumerate(topologies):
            for w in range(self.tcfg.warmup_steps):
                self.hooks.before_step(0, 0.0)
                if topology is not None:  # after the hook, which would switch the loop off at step 0
                    self.model.set_looping(topology)
                self.train_step(w)
                self.opts.step()
                tag = "" if topology is None else f" looping:{int(topology)}"
                self.log.line(f"warmup_step:{phase * self.tcfg.warmup_steps + w + 1}/{total}{tag}")
        self.model.load_state_dict(init_model)
        self.opts.load_state_dict(copy.deepcopy(init_opt))
        self.opts.zero_grad()
        if looped:
            self.model.set_looping(init_looping)

    def state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """The full training state at the current step (``rngs``: every rank's generators)."""
        return {"model": self.model.state_dict(), "optimizers": self.opts.state_dict(),
                "loader": self.loader.state_dict(), "step": self.step, "train_ms": self.train_ms, "rng": rngs}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` (model, optimisers, loader identity, step, time, this rank's RNG)."""
        self.model.load_state_dict(state["model"])
        self.opts.load_state_dict(state["optimizers"])
        self.loader.load_state_dict(state["loader"])
        self.step, self.train_ms = state["step"], state["train_ms"]
        rng = state["rng"]
        set_rng_state(rng[self.env.rank] if isinstance(rng, list) else rng)

    def _last_good(self) -> str:
        ckpt = self.hooks.checkpoint_path
        return (f"the last good checkpoint {ckpt} is intact" if ckpt is not None and ckpt.exists()
                else "no checkpoint was written")

    def save(self) -> None:
        """Gather every rank's RNG and hand the state to the checkpoint hook on rank 0; raises
        :class:`TrainingError` instead when the weights are not all finite (every rank holds the
        same weights, so every rank raises)."""
        bad = non_finite_tensors(self.model.state_dict())
        if bad:
            raise TrainingError(f"the weights hold NaN or inf after step {self.step} ({', '.join(bad[:4])}); "
                                f"stopping without saving them; {self._last_good()}")
        rngs = [None] * self.env.world_size
        if self.env.distributed:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if self.env.master:
            self.hooks.checkpoint(self.state(rngs))
        if self.env.distributed:
            dist.barrier()

    def _log_step(self, loss: float, now_ms: float, bar) -> None:
        t, step = self.tcfg, self.step
        bar.update(1)
        if self.env.master:
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{step * t.train_batch_tokens / max(now_ms / 1000, 1e-9):.0f}")
        if t.train_log_every and (step <= 5 or step % t.train_log_every == 0):
            self.log.line(f"step:{step}/{t.iterations} train_loss:{loss:.4f} "
                          f"train_time:{now_ms:.0f}ms step_avg:{now_ms / step:.2f}ms")
        self.log.metric("train", step=step, train_loss=loss, train_time_ms=now_ms)

    def run(self) -> LoopResult:
        """Train from the current step to ``iterations`` or the wall-clock cap; checkpoints at the
        end. Validation pauses and checkpoint writes are not counted as training time."""
        t = self.tcfg
        cap_ms = 1000.0 * t.max_wallclock_seconds if t.max_wallclock_seconds > 0 else math.inf
        bar = progress(total=t.iterations, desc="train", unit="step", enabled=self.env.master)
        bar.update(self.step)
        stop_reason = "iterations"
        with SignalFlag() as sig:
            sync(self.device)
            t0 = time.perf_counter()
            while self.step < t.iterations:
                if t.val_loss_every and self.step % t.val_loss_every == 0 and self.step > 0:
                    sync(self.device)
                    self.train_ms += 1000.0 * (time.perf_counter() - t0)
                    self.hooks.validate(self.step, self.train_ms, False)
                    sync(self.device)
                    t0 = time.perf_counter()
                elapsed_s = (self.train_ms + 1000.0 * (time.perf_counter() - t0)) / 1000.0
                self.opts.schedule(self.step, elapsed_s)
                self.hooks.before_step(self.step, elapsed_s)
                loss = float(self.train_step(self.step).item())
                if not math.isfinite(loss):
                    raise TrainingError(f"non-finite train loss ({loss}) at step {self.step + 1}; stopping; "
                                        f"{self._last_good()}")
                self.opts.step()
                self.step += 1
                now_ms = self.train_ms + 1000.0 * (time.perf_counter() - t0)
                self._log_step(loss, now_ms, bar)
                interrupted, capped = any_rank((sig.signum is not None, now_ms >= cap_ms), self.env, self.device)
                if interrupted or (t.checkpoint_every and self.step % t.checkpoint_every == 0):
                    sync(self.device)
                    self.train_ms += 1000.0 * (time.perf_counter() - t0)
                    self.save()
                    t0 = time.perf_counter()
                if interrupted:
                    self.log.line(f"interrupted by signal at step {self.step}; checkpoint saved to "
                                  f"{self.hooks.checkpoint_path}; continue with --resume")
                    raise Interrupted(128 + (sig.signum or signal.SIGTERM))
                if capped:
                    stop_reason = "wallclock_cap"
                    self.log.line(f"stopping_early: wallclock_cap train_time:{now_ms:.0f}ms "
                                  f"step:{self.step}/{t.iterations}")
                    break
            sync(self.device)
            self.train_ms += 1000.0 * (time.perf_counter() - t0)
        bar.close()
        self.save()
        return LoopResult(self.step, self.train_ms, stop_reason)
