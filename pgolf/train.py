"""The main job: train, export a size-accounted artifact, reload it, and report the score.

One process on a CPU or a GPU, or ``torchrun`` with any number of processes and nodes (NCCL on
GPUs, gloo on CPUs). The global batch is independent of the world size: each optimiser step
consumes ``train_batch_tokens`` tokens split over ``world_size * grad_accum_steps`` micro-batches.

Never lose work: checkpoints (model, optimisers, step, training time, loader position, RNG) are
written atomically every ``checkpoint_every`` steps, at the end, and when SIGTERM/SIGINT arrives;
a non-finite loss stops the run naming the step and leaves the last good checkpoint untouched.
"""
from __future__ import annotations

import copy
import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RunConfig
from .evaluate import autocast_for, evaluate, unigram_bpb
from .export import export_model, load_exported
from .loader import TokenLoader
from .model import GPT, prepare_for_training
from .optim import Optimizers
from .progress import progress
from .qat import enable_qat, qat_state_at, set_qat_state
from .report import RunLog, plot_loss_curve, write_submission
from .shards import load_tokens
from .tokenizer import byte_table, load_tokenizer


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, missing data); the message says why and where."""


class Interrupted(SystemExit):
    """SIGTERM/SIGINT arrived; a checkpoint was saved before leaving."""


@dataclass(frozen=True)
class DistEnv:
    """Process placement, read once from torchrun's variables by the entry point."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "DistEnv":
        if "RANK" in environ and "WORLD_SIZE" in environ:
            return cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0)))
        return cls()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def pick_device(cfg: RunConfig, env: DistEnv) -> torch.device:
    if cfg.train.device != "auto":
        return torch.device(cfg.train.device)
    return torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _all_reduce_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= env.world_size
    return x


def _any_rank(flags: tuple[bool, ...], env: DistEnv, device: torch.device) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks, in one collective, so every rank takes the same branch."""
    if not env.distributed:
        return flags
    t = torch.tensor([int(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


class _SignalFlag:
    """Records SIGTERM/SIGINT so the loop can checkpoint at the next step boundary."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        try:
            for s in (signal.SIGTERM, signal.SIGINT):
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)


def prepare_data(cfg: RunConfig, env: DistEnv, log: RunLog) -> None:
    """Build the embedded demo corpus when the config asks for it and the shards are absent."""
    import glob

    d = cfg.data
    if not d.embedded_default or (glob.glob(d.train_glob) and glob.glob(d.val_glob) and Path(d.tokenizer).exists()):
        return
    if env.master:
        from .dataset import build_embedded_dataset

        log.line(f"data: building the embedded demo corpus into {d.embedded_dir} (once)")
        t0 = time.perf_counter()
        build_embedded_dataset(d.embedded_dir, vocab_size=d.embedded_vocab_size)
        log.line(f"data: built in {time.perf_counter() - t0:.1f}s")
    if env.distributed:
        dist.barrier()


def run_training(cfg: RunConfig, env: DistEnv = DistEnv(), *, resume: bool = False, overwrite: bool = False,
                 echo: bool = True) -> dict[str, Any]:
    """Train per ``cfg``, export, reload and score. Returns the final report (also written to
    ``run_dir/submission.json`` on rank 0).

    A run directory that already holds a checkpoint is never started over silently: pass
    ``resume`` to continue it or ``overwrite`` to discard it.
    """
    ckpt = Path(cfg.train.run_dir) / "checkpoint.pt"
    if ckpt.exists() and not (resume or overwrite):
        raise TrainingError(f"{ckpt} already exists; continue it with --resume, or start over with --overwrite")
    device = pick_device(cfg, env)
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    try:
        return _run(cfg, env, device, resume=resume, echo=echo)
    finally:
        if env.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: RunConfig, env: DistEnv, device: torch.device, *, resume: bool, echo: bool) -> dict[str, Any]:
    t_cfg, run_dir = cfg.train, Path(cfg.train.run_dir)
    log = RunLog(run_dir, enabled=env.master, echo=echo)
    ckpt_path = run_dir / "checkpoint.pt"
    if env.master:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for stale in ("train.log", "metrics.jsonl"):
                (run_dir / stale).unlink(missing_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    prepare_data(cfg, env, log)

    torch.manual_seed(t_cfg.seed)
    np.random.seed(t_cfg.seed)
    sp = load_tokenizer(cfg.data.tokenizer)
    cfg.validate(tokenizer_vocab=int(sp.vocab_size()))
    table = byte_table(sp, cfg.model.vocab_size)
    val_tokens = torch.from_numpy(load_tokens(cfg.data.val_glob, vocab_size=cfg.model.vocab_size).astype(np.int64))
    val_bytes = (torch.from_numpy(load_tokens(cfg.data.val_bytes_glob).astype(np.int64))
                 if cfg.data.val_bytes_glob else None)
    grad_accum = cfg.grad_accum_steps(env.world_size)
    loader = TokenLoader(cfg.data.train_glob, rank=env.rank, world_size=env.world_size, seed=0)

    model = prepare_for_training(GPT(cfg.model), device)
    qat_on = cfg.quant.qat_start_frac >= 0
    if qat_on:
        enable_qat(model, cfg.quant, impl=t_cfg.kernels)
    opts = Optimizers(model, cfg.optim, t_cfg)
    fwd = torch.compile(model, dynamic=False) if t_cfg.compile else model
    if env.distributed:
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    n_params = sum(p.numel() for p in model.parameters())
    log.line(f"model_params:{n_params}")
    log.line(f"world_size:{env.world_size} grad_accum_steps:{grad_accum} device:{device}")
    log.line(f"train_batch_tokens:{t_cfg.train_batch_tokens} train_seq_len:{t_cfg.seq_len} "
             f"iterations:{t_cfg.iterations} warmup_steps:{t_cfg.warmup_steps} "
             f"max_wallclock_seconds:{t_cfg.max_wallclock_seconds:.3f}")
    log.line(f"val_loader:pattern={cfg.data.val_glob} tokens:{len(val_tokens) - 1}")

    def train_step(step: int) -> torch.Tensor:
        """One optimiser step's forward/backward over all micro-batches; returns the mean loss."""
        opts.zero_grad()
        loss_sum = torch.zeros((), device=device)
        for micro in range(grad_accum):
            x, y = loader.next_batch(step, global_tokens=t_cfg.train_batch_tokens, seq_len=t_cfg.seq_len,
                                     grad_accum_steps=grad_accum, micro_step=micro)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = fwd.no_sync() if env.distributed and micro < grad_accum - 1 else nullcontext()
            with sync, autocast_for(device):
                loss = fwd(x, y)
            (loss / grad_accum).backward()
            loss_sum += loss.detach()
        return _all_reduce_mean(loss_sum / grad_accum, env)

    def qat_schedule(step: int, elapsed_s: float) -> None:
        """QAT on/off and temperature at this point of training (by steps, or by time under a cap)."""
        if qat_on:
            frac = step / t_cfg.iterations
            if t_cfg.max_wallclock_seconds > 0:
                frac = max(frac, elapsed_s / t_cfg.max_wallclock_seconds)
            active, temperature = qat_state_at(cfg.quant, frac)
            set_qat_state(model, active=active, temperature=temperature)

    # torch.compile warm-up on training batches only, then restore the exact initial state.
    if t_cfg.compile and t_cfg.warmup_steps > 0 and not resume:
        init_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        init_opt = opts.state_dict()
        for w in range(t_cfg.warmup_steps):
            qat_schedule(0, 0.0)
            train_step(w)
            opts.step()
            log.line(f"warmup_step:{w + 1}/{t_cfg.warmup_steps}")
        model.load_state_dict(init_model)
        opts.load_state_dict(copy.deepcopy(init_opt))
        opts.zero_grad()

    step, train_ms = 0, 0.0
    if resume:
        if not ckpt_path.exists():
            raise TrainingError(f"--resume: no checkpoint at {ckpt_path}")
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opts.load_state_dict(ck["optimizers"])
        loader.load_state_dict(ck["loader"])
        step, train_ms = ck["step"], ck["train_ms"]
        set_rng_state(ck["rng"][env.rank] if isinstance(ck["rng"], list) else ck["rng"])
        log.line(f"resumed from {ckpt_path} at step {step} (train_time:{train_ms:.0f}ms)")

    def checkpoint(at_step: int) -> None:
        rngs = [None] * env.world_size
        if env.distributed:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if env.master:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizers": opts.state_dict(),
                                        "loader": loader.state_dict(), "step": at_step, "train_ms": train_ms,
                                        "rng": rngs, "config": cfg.to_dict()})
        if env.distributed:
            dist.barrier()

    def validate(at_step: int, *, full: bool) -> Any:
        score = evaluate(model, val_tokens, table, seq_len=t_cfg.seq_len, batch_tokens=t_cfg.val_batch_size,
                         device=device, rank=env.rank, world_size=env.world_size, byte_counts=val_bytes,
                         max_tokens=0 if full else t_cfg.val_max_tokens)
        log.line(f"step:{at_step}/{t_cfg.iterations} val_loss:{score.loss:.4f} val_bpb:{score.bpb:.4f} "
                 f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(at_step, 1):.2f}ms")
        log.metric("val", step=at_step, val_loss=score.loss, val_bpb=score.bpb, tokens=score.tokens,
                   bytes=score.bytes, full=full)
        return score

    cap_ms = 1000.0 * t_cfg.max_wallclock_seconds if t_cfg.max_wallclock_seconds > 0 else math.inf
    bar = progress(total=t_cfg.iterations, desc="train", unit="step", enabled=env.master)
    bar.update(step)
    stop_reason = "iterations"
    with _SignalFlag() as sig:
        _sync(device)
        t0 = time.perf_counter()
        while step < t_cfg.iterations:
            if t_cfg.val_loss_every and step % t_cfg.val_loss_every == 0 and step > 0:
                _sync(device)
                train_ms += 1000.0 * (time.perf_counter() - t0)
                validate(step, full=False)
                _sync(device)
                t0 = time.perf_counter()
            elapsed_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
            opts.schedule(step, elapsed_ms / 1000.0)
            qat_schedule(step, elapsed_ms / 1000.0)
            loss = train_step(step)
            loss_value = float(loss.item())
            if not math.isfinite(loss_value):
                good = f"the last good checkpoint {ckpt_path} is intact" if ckpt_path.exists() else "no checkpoint was written"
                raise TrainingError(f"non-finite train loss ({loss_value}) at step {step + 1}; stopping; {good}")
            opts.step()
            step += 1
            now_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
            bar.update(1)
            if env.master:
                bar.set_postfix(loss=f"{loss_value:.3f}",
                                tok_s=f"{step * t_cfg.train_batch_tokens / max(now_ms / 1000, 1e-9):.0f}")
            if t_cfg.train_log_every and (step <= 5 or step % t_cfg.train_log_every == 0):
                log.line(f"step:{step}/{t_cfg.iterations} train_loss:{loss_value:.4f} "
                         f"train_time:{now_ms:.0f}ms step_avg:{now_ms / step:.2f}ms")
            log.metric("train", step=step, train_loss=loss_value, train_time_ms=now_ms)
            interrupted, capped = _any_rank((sig.signum is not None, now_ms >= cap_ms), env, device)
            if interrupted or (t_cfg.checkpoint_every and step % t_cfg.checkpoint_every == 0):
                _sync(device)
                train_ms += 1000.0 * (time.perf_counter() - t0)
                checkpoint(step)
                t0 = time.perf_counter()
            if interrupted:
                log.line(f"interrupted by signal at step {step}; checkpoint saved to {ckpt_path}; "
                         f"continue with --resume")
                raise Interrupted(128 + (sig.signum or signal.SIGTERM))
            if capped:
                stop_reason = "wallclock_cap"
                log.line(f"stopping_early: wallclock_cap train_time:{now_ms:.0f}ms step:{step}/{t_cfg.iterations}")
                break
        _sync(device)
        train_ms += 1000.0 * (time.perf_counter() - t0)
    bar.close()
    checkpoint(step)

    pre = validate(step, full=True)
    return _export_and_score(cfg, env, device, model, log, run_dir, val_tokens, val_bytes, table, pre,
                             step=step, train_ms=train_ms, stop_reason=stop_reason)


def _export_and_score(cfg, env, device, model, log, run_dir, val_tokens, val_bytes, table, pre, *,
                      step, train_ms, stop_reason) -> dict[str, Any]:
    """Export on rank 0, reload into a fresh model on every rank, score it, write the report."""
    artifact = run_dir / "model.pgolf"
    report = None
    if env.master:
        report = export_model(model, cfg.quant, artifact, allow_oversize=cfg.train.allow_oversize,
                              meta={"step": step, "name": cfg.name})
        log.line(f"Serialized model {cfg.quant.codec}: {report.bytes_model} bytes")
        log.line(f"Code size: {report.bytes_code} bytes")
        log.line(f"Total submission size: {report.bytes_total} bytes (cap 16000000)")
    if env.distributed:
        dist.barrier()
    loaded = load_exported(artifact, device=device)
    t0 = time.perf_counter()
    post = evaluate(loaded, val_tokens, table, seq_len=cfg.train.seq_len, batch_tokens=cfg.train.val_batch_size,
                    device=device, rank=env.rank, world_size=env.world_size, byte_counts=val_bytes)
    eval_ms = 1000.0 * (time.perf_counter() - t0)
    tag = f"final_{cfg.quant.codec}_roundtrip"
    log.line(f"{tag} val_loss:{post.loss:.4f} val_bpb:{post.bpb:.4f} eval_time:{eval_ms:.0f}ms")
    log.line(f"{tag}_exact val_loss:{post.loss:.8f} val_bpb:{post.bpb:.8f}")
    log.line(f"quant_gap val_bpb:{post.bpb - pre.bpb:+.6f} (pre-export {pre.bpb:.6f})")
    result = {"name": cfg.name, "val_loss": post.loss, "val_bpb": post.bpb,
              "pre_export_val_loss": pre.loss, "pre_export_val_bpb": pre.bpb,
              "quant_gap_bpb": post.bpb - pre.bpb, "val_tokens": post.tokens, "val_bytes": post.bytes,
              "steps": step, "train_time_ms": round(train_ms), "stop_reason": stop_reason,
              "world_size": env.world_size, "device": str(device),
              "date": time.strftime("%Y-%m-%d", time.gmtime())}
    if env.master:
        uni = unigram_bpb(val_tokens.numpy(), table) if val_bytes is None else float("nan")
        log.line(f"unigram_entropy val_bpb:{uni:.4f} (a model that learned only token frequencies)")
        result.update(bytes_total=report.bytes_total, bytes_code=report.bytes_code,
                      bytes_model=report.bytes_model, unigram_bpb=uni)
        log.metric("final", **{k: v for k, v in result.items() if isinstance(v, (int, float, str))})
        write_submission(run_dir / "submission.json", result)
        plot_loss_curve(log.metrics_path, run_dir / "loss_curve.png", title=f"{cfg.name}: val_bpb {post.bpb:.4f}")
        log.line(f"run directory: {run_dir}")
    if env.distributed:  # leave together: a rank tearing down gloo while another still works can abort
        dist.barrier()
    return result
