"""The main job: data -> model -> train -> quantise -> artifact -> reload -> score -> report.

The only module that composes the stages: the training loop gets validation (:mod:`pgolf.eval`),
checkpoint writing and the QAT schedule (:mod:`pgolf.quant.qat`) as hooks; after training the
model is exported (:mod:`pgolf.artifact`), reloaded into a fresh model on every rank and scored.
"""
from __future__ import annotations

import glob
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pgolf.artifact.export import export_model, load_exported
from pgolf.config import ConfigError, RunConfig
from pgolf.data.build import build_embedded_dataset
from pgolf.data.loader import TokenLoader
from pgolf.data.shards import load_tokens
from pgolf.data.tokenizer import ByteTable, byte_table, load_tokenizer
from pgolf.eval.flat import evaluate, unigram_bpb
from pgolf.eval.official import evaluate_official
from pgolf.eval.scoring import Score
from pgolf.model.gpt import GPT
from pgolf.optim.optimizers import Optimizers
from pgolf.quant.qat import enable_qat, qat_state_at, set_qat_state
from pgolf.train.checkpoint import load_checkpoint, save_checkpoint
from pgolf.train.loop import LoopHooks, LoopResult, Trainer, TrainingError
from pgolf.train.runlog import RunLog, plot_loss_curve
from pgolf.util.atomic import atomic_write_text
from pgolf.util.device import DistEnv, pick_device


def prepare_data(cfg: RunConfig, env: DistEnv, log: RunLog) -> None:
    """Build the embedded demo corpus when the config asks for it and the shards are absent."""
    d = cfg.data
    if not d.embedded_default or (glob.glob(d.train_glob) and glob.glob(d.val_glob) and Path(d.tokenizer).exists()):
        return
    if env.master:
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
    device = pick_device(cfg.train.device, env)
    if env.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _run(cfg, env, device, resume=resume, echo=echo)
    finally:
        if env.distributed and dist.is_initialized():
            dist.destroy_process_group()


class _ValData:
    """The validation stream, its byte table (or per-token byte sidecar) and the score hook."""

    def __init__(self, cfg: RunConfig, env: DistEnv, device: torch.device, table: ByteTable, log: RunLog):
        self.cfg, self.env, self.device, self.table, self.log = cfg, env, device, table, log
        self.batch_tokens = val_batch_per_rank(cfg, env.world_size)
        vocab = cfg.model.vocab_size
        self.tokens = torch.from_numpy(load_tokens(cfg.data.val_glob, vocab_size=vocab).astype(np.int64))
        self.bytes = (torch.from_numpy(load_tokens(cfg.data.val_bytes_glob).astype(np.int64))
                      if cfg.data.val_bytes_glob else None)

    def score(self, model: GPT, *, full: bool = True) -> Score:
        """Score ``model`` on the whole split (or the periodic capped subset when not ``full``)."""
        t = self.cfg.train
        where = dict(seq_len=t.seq_len, batch_tokens=self.batch_tokens, device=self.device, rank=self.env.rank,
                     world_size=self.env.world_size, max_tokens=0 if full else t.val_max_tokens)
        if t.val_sum == "official":
            return evaluate_official(model, self.tokens, self.table, **where)
        return evaluate(model, self.tokens, self.table, byte_counts=self.bytes, **where)

    def validate(self, model: GPT, step: int, train_ms: float, full: bool) -> Score:
        """Score and log the official-style ``val_loss``/``val_bpb`` line and a metrics event."""
        score = self.score(model, full=full)
        self.log.line(f"step:{step}/{self.cfg.train.iterations} val_loss:{score.loss:.4f} val_bpb:{score.bpb:.4f} "
                      f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
        self.log.metric("val", step=step, val_loss=score.loss, val_bpb=score.bpb, tokens=score.tokens,
                        bytes=score.bytes, full=full)
        return score


def val_batch_per_rank(cfg: RunConfig, world_size: int) -> int:
    """Validation tokens per forward on one rank: ``val_batch_size // (world_size * grad_accum)``
    (the official split; one rank never holds the whole global batch's logits)."""
    t = cfg.train
    per_rank = t.val_batch_size // (world_size * cfg.grad_accum_steps(world_size))
    if per_rank < t.seq_len:
        raise ConfigError(f"train.val_batch_size={t.val_batch_size} gives {per_rank} tokens per rank and micro-step "
                          f"(world_size={world_size}, grad_accum={cfg.grad_accum_steps(world_size)}), less than one "
                          f"sequence of train.seq_len={t.seq_len}; raise train.val_batch_size")
    return per_rank


def _qat_hook(cfg: RunConfig, model: GPT):
    """The per-step QAT switch and temperature (by steps, or by time under a cap); None without QAT."""
    t = cfg.train

    def before_step(step: int, elapsed_s: float) -> None:
        frac = step / t.iterations
        if t.max_wallclock_seconds > 0:
            frac = max(frac, elapsed_s / t.max_wallclock_seconds)
        active, temperature = qat_state_at(cfg.quant, frac)
        set_qat_state(model, active=active, temperature=temperature)

    return before_step


def _run(cfg: RunConfig, env: DistEnv, device: torch.device, *, resume: bool, echo: bool) -> dict[str, Any]:
    t_cfg, run_dir = cfg.train, Path(cfg.train.run_dir)
    log = RunLog(run_dir, enabled=env.master, echo=echo)
    ckpt_path = run_dir / "checkpoint.pt"
    if env.master:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for stale in ("train.log", "metrics.jsonl"):
                (run_dir / stale).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    prepare_data(cfg, env, log)

    torch.manual_seed(t_cfg.seed)
    np.random.seed(t_cfg.seed)
    sp = load_tokenizer(cfg.data.tokenizer)
    cfg.validate(tokenizer_vocab=int(sp.vocab_size()))
    val = _ValData(cfg, env, device, byte_table(sp, cfg.model.vocab_size), log)
    grad_accum = cfg.grad_accum_steps(env.world_size)
    loader = TokenLoader(cfg.data.train_glob, rank=env.rank, world_size=env.world_size, seed=0,
                         order=cfg.data.token_order)

    model = GPT(cfg.model).place(device)
    qat_on = cfg.quant.qat_start_frac >= 0
    if qat_on:
        enable_qat(model, cfg.quant, impl=t_cfg.kernels)
    opts = Optimizers(model, cfg.optim, t_cfg)
    forward = torch.compile(model, dynamic=False) if t_cfg.compile else model
    if env.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    log.line(f"model_params:{sum(p.numel() for p in model.parameters())}")
    log.line(f"world_size:{env.world_size} grad_accum_steps:{grad_accum} device:{device}")
    log.line(f"train_batch_tokens:{t_cfg.train_batch_tokens} train_seq_len:{t_cfg.seq_len} "
             f"iterations:{t_cfg.iterations} warmup_steps:{t_cfg.warmup_steps} "
             f"max_wallclock_seconds:{t_cfg.max_wallclock_seconds:.3f}")
    log.line(f"val_loader:pattern={cfg.data.val_glob} tokens:{len(val.tokens) - 1}")

    def checkpoint(state: dict[str, Any]) -> None:
        save_checkpoint(ckpt_path, {**state, "config": cfg.to_dict()})

    hooks = LoopHooks(validate=lambda step, ms, full: val.validate(model, step, ms, full), checkpoint=checkpoint,
                      checkpoint_path=ckpt_path)
    if qat_on:
        hooks.before_step = _qat_hook(cfg, model)
    trainer = Trainer(model, forward, opts, loader, t_cfg, env=env, device=device, grad_accum=grad_accum, log=log,
                      hooks=hooks)
    if t_cfg.compile and t_cfg.warmup_steps > 0 and not resume:
        trainer.warm_up_compile()
    if resume:
        if not ckpt_path.exists():
            raise TrainingError(f"--resume: no checkpoint at {ckpt_path}")
        trainer.restore(load_checkpoint(ckpt_path))
        log.line(f"resumed from {ckpt_path} at step {trainer.step} (train_time:{trainer.train_ms:.0f}ms)")
    result = trainer.run()
    pre = val.validate(model, result.step, result.train_ms, True)
    return _export_and_score(cfg, env, device, model, log, val, pre, result)


def _export_and_score(cfg: RunConfig, env: DistEnv, device: torch.device, model: GPT, log: RunLog, val: _ValData,
                      pre: Score, trained: LoopResult) -> dict[str, Any]:
    """Export on rank 0, reload into a fresh model on every rank, score it, write the report."""
    run_dir = Path(cfg.train.run_dir)
    official = cfg.quant.scheme == "official_int8"
    artifact = run_dir / ("final_model.int8.ptz" if official else "model.pgolf")
    tag = "final_int8_zlib_roundtrip" if official else f"final_{cfg.quant.codec}_roundtrip"
    report = None
    if env.master:
        report = export_model(model, cfg.quant, artifact, allow_oversize=cfg.train.allow_oversize,
                              meta={"step": trained.step, "name": cfg.name})
        log.line(f"Serialized model {'int8+zlib' if official else cfg.quant.codec}: {report.bytes_model} bytes")
        log.line(f"Code size: {report.bytes_code} bytes")
        log.line(f"Total submission size: {report.bytes_total} bytes (cap 16000000)")
    if env.distributed:
        dist.barrier()
    loaded = load_exported(artifact, device=device, official_cfg=cfg.model if official else None)
    t0 = time.perf_counter()
    post = val.score(loaded)
    eval_ms = 1000.0 * (time.perf_counter() - t0)
    log.line(f"{tag} val_loss:{post.loss:.4f} val_bpb:{post.bpb:.4f} eval_time:{eval_ms:.0f}ms")
    log.line(f"{tag}_exact val_loss:{post.loss:.8f} val_bpb:{post.bpb:.8f}")
    log.line(f"quant_gap val_bpb:{post.bpb - pre.bpb:+.6f} (pre-export {pre.bpb:.6f})")
    result = {"name": cfg.name, "val_loss": post.loss, "val_bpb": post.bpb,
              "pre_export_val_loss": pre.loss, "pre_export_val_bpb": pre.bpb,
              "quant_gap_bpb": post.bpb - pre.bpb, "val_tokens": post.tokens, "val_bytes": post.bytes,
              "steps": trained.step, "train_time_ms": round(trained.train_ms), "stop_reason": trained.stop_reason,
              "world_size": env.world_size, "device": str(device),
              "date": time.strftime("%Y-%m-%d", time.gmtime())}
    if env.master:
        uni = unigram_bpb(val.tokens.numpy(), val.table) if val.bytes is None else float("nan")
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


def write_submission(path: str | Path, fields: dict[str, Any]) -> None:
    """``submission.json`` in the official shape (name, val_loss, val_bpb, bytes_total,
    bytes_code, ...), with measured values only."""
    atomic_write_text(path, json.dumps(fields, indent=2) + "\n")
