"""The main job: data -> model -> train -> quantise -> artifact -> reload -> score -> report.

The only module that composes the stages: the training loop gets validation (:mod:`pgolf.eval`),
checkpoint writing and the QAT schedule (:mod:`pgolf.quant.qat`) as hooks; after training the
model is exported (:mod:`pgolf.artifact`), reloaded into a fresh model on every rank and scored.

Nothing in the run directory is touched before everything the run needs is known to be valid
(:func:`preflight`: config, tokenizer, data identity and sizes, the checkpoint to resume); then
the directory is locked (:class:`pgolf.util.runlock.RunDirLock`) for the rest of the run. A run
whose weights or score are not finite stops with an error and writes no score.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from pgolf.artifact.export import ARTIFACT_NAMES, export_model, load_exported
from pgolf.config import ConfigError, RunConfig, TrainConfig
from pgolf.config.resume import RESUMABLE, resume_differences
from pgolf.data.build import build_embedded_dataset
from pgolf.data.identity import (TokenizerIdentity, check_dataset, check_disjoint, check_tokenizer, run_identity,
                                 tokenizer_identity)
from pgolf.data.loader import TokenLoader
from pgolf.data.manifest import DataError
from pgolf.data.shards import load_tokens
from pgolf.data.tokenizer import ByteTable, byte_table, load_tokenizer
from pgolf.eval.flat import evaluate, unigram_bpb
from pgolf.eval.modes import evaluate_modes, result_lines
from pgolf.eval.scoring import Score
from pgolf.model.gpt import GPT
from pgolf.model.loss import fused_loss_unavailable
from pgolf.optim.optimizers import Optimizers
from pgolf.optim.schedule import training_fraction
from pgolf.quant.qat import enable_qat, qat_state_at, set_qat_state
from pgolf.train.checkpoint import load_checkpoint, pgolf_checkpoint, save_checkpoint
from pgolf.train.loop import LoopHooks, LoopResult, Trainer, TrainingError
from pgolf.train.runlog import RunLog, plot_loss_curve
from pgolf.util.atomic import atomic_write_text
from pgolf.util.device import DistEnv, pick_device
from pgolf.util.runlock import RunDirLock

# What ``--overwrite`` removes (after validation): reports that would describe the old run.
# The checkpoint and the artifact are replaced atomically when the new run writes its own; the
# artifact of the other export scheme, if any, goes then (it would describe the old run).
STALE_REPORTS = ("train.log", "metrics.jsonl", "submission.json", "loss_curve.png")
# Files whose presence means the folder holds a run (or a records folder): never written over unasked.
RUN_DIR_MARKERS = ("checkpoint.pt", "config.json", *STALE_REPORTS, *ARTIFACT_NAMES.values())


def prepare_data(cfg: RunConfig, env: DistEnv, say: Callable[[str], None]) -> None:
    """Build the embedded demo corpus when the config asks for it and the shards are absent."""
    d = cfg.data
    if not d.embedded_default or (glob.glob(d.train_glob) and glob.glob(d.val_glob) and Path(d.tokenizer).exists()):
        return
    if env.master:
        say(f"data: building the embedded demo corpus into {d.embedded_dir} (once)")
        t0 = time.perf_counter()
        build_embedded_dataset(d.embedded_dir, vocab_size=d.embedded_vocab_size)
        say(f"data: built in {time.perf_counter() - t0:.1f}s")
    if env.distributed:
        dist.barrier()


def run_training(cfg: RunConfig, env: DistEnv = DistEnv(), *, resume: bool = False, overwrite: bool = False,
                 echo: bool = True) -> dict[str, Any]:
    """Train per ``cfg``, export, reload and score. Returns the final report (also written to
    ``run_dir/submission.json`` on rank 0).

    A run directory that already holds a checkpoint is never started over silently: pass
    ``resume`` to continue it or ``overwrite`` to discard it.
    """
    run_dir = Path(cfg.train.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"train.run_dir {run_dir} is a file, not a folder; choose another --run-dir")
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists() and not (resume or overwrite):
        raise TrainingError(f"{ckpt} already exists; continue it with --resume, or start over with --overwrite")
    held = [f for f in RUN_DIR_MARKERS if (run_dir / f).exists()]
    if held and not (resume or overwrite):
        raise TrainingError(f"train.run_dir {run_dir} already holds {', '.join(held)} (a run without a checkpoint, "
                            "or a records folder); start over there with --overwrite, or choose another --run-dir")
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

    def __init__(self, cfg: RunConfig, env: DistEnv, device: torch.device, table: ByteTable, tokenizer_vocab: int):
        self.cfg, self.env, self.device, self.table = cfg, env, device, table
        self.log: RunLog | None = None
        self.batch_tokens = val_batch_per_rank(cfg, env.world_size)
        self.tokens = torch.from_numpy(load_tokens(cfg.data.val_glob, vocab_size=tokenizer_vocab).astype(np.int64))
        check_val_size(len(self.tokens), cfg.train.seq_len, cfg.data.val_glob)
        self.bytes = (torch.from_numpy(load_tokens(cfg.data.val_bytes_glob).astype(np.int64))
                      if cfg.data.val_bytes_glob else None)
        if self.bytes is not None and len(self.bytes) != len(self.tokens):
            raise DataError(f"data.val_bytes_glob {cfg.data.val_bytes_glob!r} holds {len(self.bytes)} byte counts but "
                            f"the validation split {cfg.data.val_glob!r} holds {len(self.tokens)} tokens; the sidecar "
                            "needs one count per validation token (pgolf data writes both from the same documents)")

    def score(self, model: GPT, *, full: bool = True) -> Score:
        """Score ``model`` on the whole split (or the periodic capped subset when not ``full``)."""
        t = self.cfg.train
        where = dict(seq_len=t.seq_len, batch_tokens=self.batch_tokens, device=self.device, rank=self.env.rank,
                     world_size=self.env.world_size, max_tokens=0 if full else t.val_max_tokens)
        if t.val_sum == "official":
            from pgolf.eval.official import evaluate_official  # only this setting (pgolf submit leaves it out)

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


def check_val_size(num_tokens: int, seq_len: int, val_glob: str) -> None:
    """Refuse a validation split shorter than one window of ``seq_len`` targets: its score
    would be ``nan`` (no tokens) or rest on a handful of tokens."""
    if num_tokens < seq_len + 1:
        raise DataError(f"the validation split {val_glob!r} holds {num_tokens} tokens; scoring needs at least "
                        f"train.seq_len + 1 = {seq_len + 1}. Give it more documents (pgolf data --num-val-docs)")


@dataclass
class Preflight:
    """Everything a run needs, checked before its run directory is touched."""

    tokenizer: TokenizerIdentity
    identity: dict[str, Any]
    val: _ValData
    loader: TokenLoader
    grad_accum: int
    resume_state: dict[str, Any] | None
    notes: list[str]


def preflight(cfg: RunConfig, env: DistEnv, device: torch.device, *, resume: bool,
              say: Callable[[str], None]) -> Preflight:
    """Check config, tokenizer, data identity (:mod:`pgolf.data.identity`), split sizes and the
    checkpoint to resume, raising a clear error before any file of the run is written."""
    problem = fused_loss_unavailable(cfg.model.loss_impl, torch.empty(0, device=device))
    if problem is not None:
        raise ConfigError(problem)
    prepare_data(cfg, env, say)
    d, t = cfg.data, cfg.train
    sp = load_tokenizer(d.tokenizer)
    vocab = int(sp.vocab_size())
    cfg.validate(tokenizer_vocab=vocab)
    grad_accum = cfg.grad_accum_steps(env.world_size)
    tok = tokenizer_identity(d.tokenizer, vocab)
    train_set = check_dataset(d.train_glob, tok, verify=d.verify_manifest, small_val_split=d.small_val_split)
    val_set = check_dataset(d.val_glob, tok, verify=d.verify_manifest, small_val_split=d.small_val_split)
    check_disjoint(train_set, val_set)
    notes = [f"data: {s.pattern} read unverified (no manifest; data.verify_manifest=false)"
             for s in (train_set, val_set) if not s.verified]
    val = _ValData(cfg, env, device, byte_table(sp, cfg.model.vocab_size), vocab)
    loader = TokenLoader(d.train_glob, rank=env.rank, world_size=env.world_size, seed=0, vocab_size=vocab,
                         order=d.token_order)
    if loader.total < t.seq_len + 1:
        raise DataError(f"the training split {d.train_glob!r} holds {loader.total} tokens, less than one sequence "
                        f"of train.seq_len={t.seq_len}; give it more documents")
    reads = t.iterations * t.train_batch_tokens
    if reads > loader.total:
        notes.append(f"warning: the training split holds {loader.total} tokens; {t.iterations} steps of "
                     f"{t.train_batch_tokens} read it {reads / loader.total:.1f} times over (it wraps around)")
    identity = run_identity(tokenizer=tok, tokenizer_path=d.tokenizer, vocab_size=cfg.model.vocab_size,
                            seq_len=t.seq_len, val_glob=d.val_glob, val_bytes_glob=d.val_bytes_glob,
                            val_batch_size=t.val_batch_size)
    state = None
    if resume:
        ckpt = Path(t.run_dir) / "checkpoint.pt"
        if not ckpt.exists():
            raise TrainingError(f"--resume: no checkpoint at {ckpt}")
        state = pgolf_checkpoint(load_checkpoint(ckpt), ckpt)
        if t.iterations < state["step"]:
            raise ConfigError(f"--resume: {ckpt} is at step {state['step']}, past train.iterations={t.iterations}; "
                              f"continue with train.iterations >= {state['step']}, or start over with --overwrite")
        diffs = resume_differences(state["config"], cfg.to_dict())
        if diffs:
            raise ConfigError(f"--resume: the config differs from the one {ckpt} was trained with: {'; '.join(diffs)}. "
                              f"Only these may change on resume: {', '.join(sorted(RESUMABLE))}; "
                              "start over with --overwrite instead")
        check_tokenizer(state.get("identity", {}).get("tokenizer"), tok, what=f"checkpoint {ckpt}")
    return Preflight(tok, identity, val, loader, grad_accum, state, notes)


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


def _qat_hook(cfg: RunConfig, t: TrainConfig, model: GPT):
    """The per-step QAT switch and temperature (by steps, or by time under the cap left for training
    in ``t``); None without QAT."""

    def before_step(step: int, elapsed_s: float) -> None:
        frac = step / t.iterations
        if t.max_wallclock_seconds > 0:
            frac = max(frac, elapsed_s / t.max_wallclock_seconds)
        active, temperature = qat_state_at(cfg.quant, frac)
        set_qat_state(model, active=active, temperature=temperature)

    return before_step


def _loop_hook(cfg: RunConfig, t: TrainConfig, model: GPT):
    """Depth recurrence off until the training fraction (of ``t``: the cap left for training) reaches
    ``model.loop_enable_frac``, then on for good (a buffer write, so a compiled model follows it); None
    without looped layers."""
    m = cfg.model
    if not m.num_loops:
        return None

    def before_step(step: int, elapsed_s: float) -> None:
        frac = training_fraction(step, elapsed_s, iterations=t.iterations, max_wallclock_seconds=t.max_wallclock_seconds)
        if frac >= m.loop_enable_frac and not bool(model.looping):
            model.set_looping(True)
        elif frac < m.loop_enable_frac and bool(model.looping):
            model.set_looping(False)  # before the switch; also after a warm-up or a resume

    return before_step


def _chain(*hooks):
    """One ``before_step`` calling each of ``hooks`` that is not None."""
    live = [h for h in hooks if h is not None]

    def before_step(step: int, elapsed_s: float) -> None:
        for hook in live:
            hook(step, elapsed_s)

    return before_step


def _run(cfg: RunConfig, env: DistEnv, device: torch.device, *, resume: bool, echo: bool) -> dict[str, Any]:
    t_cfg, run_dir = cfg.train, Path(cfg.train.run_dir)
    early: list[str] = []

    def say(msg: str) -> None:
        if echo and env.master:
            print(msg, flush=True)
        early.append(msg)

    torch.manual_seed(t_cfg.seed)
    np.random.seed(t_cfg.seed)
    pre = preflight(cfg, env, device, resume=resume, say=say)
    with RunDirLock(run_dir) if env.master else nullcontext():
        if env.master:  # a resumed run keeps its log, metrics and last export; its report would claim it finished
            for stale in ("submission.json",) if resume else STALE_REPORTS:
                (run_dir / stale).unlink(missing_ok=True)
        log = RunLog(run_dir, enabled=env.master, echo=echo)
        for msg in early:
            log.line(msg, echo=False)
        for msg in pre.notes:
            log.line(msg)
        if env.master:
            atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        return _train(cfg, env, device, log, pre, resume=resume)


def _train(cfg: RunConfig, env: DistEnv, device: torch.device, log: RunLog, pre: Preflight, *,
           resume: bool) -> dict[str, Any]:
    t_cfg, ckpt_path = cfg.train, Path(cfg.train.run_dir) / "checkpoint.pt"
    val, loader, grad_accum = pre.val, pre.loader, pre.grad_accum
    val.log = log

    model = GPT(cfg.model).place(device)  # fp32 weights, or the official dtype layout
    t_cfg = _reserve_calibration_time(cfg, model, loader, device, log)
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
        save_checkpoint(ckpt_path, {**state, "config": cfg.to_dict(), "identity": pre.identity})

    hooks = LoopHooks(validate=lambda step, ms, full: val.validate(model, step, ms, full), checkpoint=checkpoint,
                      checkpoint_path=ckpt_path)
    hooks.before_step = _chain(_qat_hook(cfg, t_cfg, model) if qat_on else None, _loop_hook(cfg, t_cfg, model))
    trainer = Trainer(model, forward, opts, loader, t_cfg, env=env, device=device, grad_accum=grad_accum, log=log,
                      hooks=hooks)
    if t_cfg.compile and t_cfg.warmup_steps > 0 and not resume:
        trainer.warm_up_compile()
    if pre.resume_state is not None:
        trainer.restore(pre.resume_state)
        log.line(f"resumed from {ckpt_path} at step {trainer.step} (train_time:{trainer.train_ms:.0f}ms)")
    result = trainer.run()
    if cfg.model.num_loops:
        model.set_looping(True)  # evaluation and export run the looped model
    if opts.ema is not None:
        opts.ema.copy_to_model()
        log.line(f"ema: the averaged weights (decay {opts.ema.decay}) replace the live ones for scoring and export")
    pre_score = val.validate(model, result.step, result.train_ms, True)
    _require_finite(pre_score, "the trained model (before export)")
    return _export_and_score(cfg, env, device, model, log, val, pre_score, result, loader, pre.identity)


def _require_finite(score: Score, what: str) -> None:
    """A non-finite score is never reported as a result."""
    if not (math.isfinite(score.loss) and math.isfinite(score.bpb)):
        raise TrainingError(f"{what} scores val_loss {score.loss} / val_bpb {score.bpb} on {score.tokens} tokens; "
                            "no score is written (the weights or the validation data are broken)")


def _calibration_input(cfg: RunConfig, loader: TokenLoader, first_step: int) -> list[torch.Tensor]:
    from pgolf.quant.calibrate import calibration_batches  # GPTQ only (pgolf submit leaves it out)

    t = cfg.train
    return calibration_batches(loader, cfg.quant.gptq_batches, first_step=first_step, seq_len=t.seq_len,
                               batch_tokens=min(t.train_batch_tokens, t.micro_batch_tokens))


def _reserve_calibration_time(cfg: RunConfig, model: GPT, loader: TokenLoader, device: torch.device,
                              log: RunLog) -> TrainConfig:
    """The training settings with the wall-clock cap lowered by the GPTQ calibration's cost, measured
    now on the initial weights (x1.25), so that training + calibration fit in the cap."""
    t = cfg.train
    if cfg.quant.method != "gptq" or t.max_wallclock_seconds <= 0:
        return t
    from pgolf.quant.calibrate import gptq_seconds

    need_s = 1.25 * gptq_seconds(model, cfg.quant, _calibration_input(cfg, loader, 0), device=device)
    if need_s >= t.max_wallclock_seconds:
        raise TrainingError(f"GPTQ calibration needs about {need_s:.1f}s (measured), which leaves no training time "
                            f"under train.max_wallclock_seconds={t.max_wallclock_seconds:g}; lower "
                            f"quant.gptq_batches or raise the cap")
    log.line(f"gptq_reserve: {need_s:.1f}s of the {t.max_wallclock_seconds:g}s cap kept for calibration")
    return dataclasses.replace(t, max_wallclock_seconds=t.max_wallclock_seconds - need_s)


def _export_and_score(cfg: RunConfig, env: DistEnv, device: torch.device, model: GPT, log: RunLog, val: _ValData,
                      pre: Score, trained: LoopResult, loader: TokenLoader, identity: dict[str, Any]) -> dict[str, Any]:
    """Calibrate (GPTQ) and export on rank 0, reload into a fresh model on every rank, score it, write
    the report."""
    run_dir = Path(cfg.train.run_dir)
    official = cfg.quant.scheme == "official_int8"
    artifact = run_dir / ARTIFACT_NAMES[cfg.quant.scheme]
    tag = "final_int8_zlib_roundtrip" if official else f"final_{cfg.quant.codec}_roundtrip"
    report, calib_ms = None, 0.0
    if env.master:
        t0 = time.perf_counter()
        hessians = None
        if cfg.quant.method == "gptq":
            from pgolf.quant.calibrate import collect_hessians

            hessians = collect_hessians(model, _calibration_input(cfg, loader, trained.step), device=device)
        report = export_model(model, cfg.quant, artifact, allow_oversize=cfg.train.allow_oversize,
                              meta={"step": trained.step, "name": cfg.name, "identity": identity},
                              hessians=hessians)
        for name in set(ARTIFACT_NAMES.values()) - {artifact.name}:
            (run_dir / name).unlink(missing_ok=True)  # an earlier run's artifact of the other scheme
        if hessians is not None:
            calib_ms = 1000.0 * (time.perf_counter() - t0)
            fallbacks = {n: m for n, m in report.methods.items() if m != "gptq"}
            log.line(f"gptq: {sum(m == 'gptq' for m in report.methods.values())} matrices, "
                     f"{len(fallbacks)} by round-to-nearest{': ' + '; '.join(f'{n}: {m}' for n, m in fallbacks.items()) if fallbacks else ''}")
            log.line(f"train_plus_calibration:{trained.train_ms + calib_ms:.0f}ms (training {trained.train_ms:.0f}ms, "
                     f"calibration + GPTQ {calib_ms:.0f}ms, cap {1000 * cfg.train.max_wallclock_seconds:.0f}ms)")
        log.line(f"Serialized model {'int8+zlib' if official else cfg.quant.codec}: {report.bytes_model} bytes")
        log.line(f"Code size: {report.bytes_code} bytes")
        log.line(f"Total submission size: {report.bytes_total} bytes (cap 16000000)")
    if env.distributed:
        dist.barrier()
    t0 = time.perf_counter()
    loaded = load_exported(artifact, device=device, official_cfg=cfg.model if official else None)
    load_s = time.perf_counter() - t0
    modes = evaluate_modes(loaded, val.tokens, val.table, cfg, device=device, byte_counts=val.bytes,
                           rank=env.rank, world_size=env.world_size)
    first = modes[cfg.eval_modes()[0]]
    post, eval_ms = first.score, 1000.0 * sum(first.seconds.values())
    if cfg.train.val_sum == "official":  # the headline as train_gpt.py sums it (the per-mode lines stay exact)
        t0 = time.perf_counter()
        post = val.score(loaded)
        eval_ms = 1000.0 * (time.perf_counter() - t0)
    log.line(f"{tag} val_loss:{post.loss:.4f} val_bpb:{post.bpb:.4f} eval_time:{eval_ms:.0f}ms")
    log.line(f"{tag}_exact val_loss:{post.loss:.8f} val_bpb:{post.bpb:.8f}")
    for line in result_lines(modes, tag, load_s):
        log.line(line)
    log.line(f"quant_gap val_bpb:{post.bpb - pre.bpb:+.6f} (pre-export {pre.bpb:.6f})")
    _require_finite(post, f"the exported artifact {artifact}")
    result = {"name": cfg.name, "val_loss": post.loss, "val_bpb": post.bpb, "eval_mode": first.mode,
              **{f"val_bpb_{m}": r.score.bpb for m, r in modes.items()},
              "pre_export_val_loss": pre.loss, "pre_export_val_bpb": pre.bpb,
              "quant_gap_bpb": post.bpb - pre.bpb, "val_tokens": post.tokens, "val_bytes": post.bytes,
              "steps": trained.step, "train_time_ms": round(trained.train_ms), "stop_reason": trained.stop_reason,
              "quant_method": cfg.quant.method, "calibration_ms": round(calib_ms),
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
