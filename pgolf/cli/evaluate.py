"""``pgolf eval`` and ``pgolf audit``: score a checkpoint or an artifact, or audit an eval mode."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from pgolf.cli.args import at_least, refuse_folder
from pgolf.config import EVAL_MODES, PREDICTORS, RunConfig


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """The model and validation data to score, and the ``eval.*`` shortcuts."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint.pt written by pgolf train")
    src.add_argument("--artifact", help="an artifact (model.pgolf) written by pgolf train")
    p.add_argument("--val-glob", help="validation shards (default: the preset's data.val_glob)")
    p.add_argument("--tokenizer", help="SentencePiece model (default: the preset's data.tokenizer)")
    p.add_argument("--mode", help=f"eval.mode: comma-separated modes, each a geometry ({', '.join(EVAL_MODES)}) "
                                  f"and/or predictors ({', '.join(PREDICTORS)}) joined by '+', e.g. doc,cache")
    for flag, key in (("--window", "window"), ("--stride", "stride"), ("--chunk", "chunk"),
                      ("--batch-docs", "batch_docs"), ("--max-seconds", "max_seconds")):
        p.add_argument(flag, dest=key, metavar="N", help=f"eval.{key}")
    p.add_argument("--pack-rows", dest="pack_rows", action="store_const", const="true",
                   help="eval.pack_rows=true: doc mode packs several documents into each forward row")


def eval_sets(args: argparse.Namespace) -> list[str]:
    """``--set`` items for the ``eval.*`` shortcuts given on the command line."""
    keys = ("mode", "window", "stride", "chunk", "batch_docs", "max_seconds", "pack_rows")
    return [f"eval.{k}={getattr(args, k)}" for k in keys if getattr(args, k) is not None]


@dataclass
class Loaded:
    """A model ready to score and its validation data."""

    cfg: RunConfig
    model: Any
    tokens: Any
    table: Any
    byte_counts: Any
    device: Any
    load_seconds: float


def _explicit_keys(args: argparse.Namespace) -> set[str]:
    """The ``section.key`` names the user set on purpose (``--set`` and official env names)."""
    from pgolf.config import env_overrides, resolve_key

    keys = set()
    for key in [item.partition("=")[0].strip() for item in args.sets] + list(env_overrides(os.environ)):
        section, name = resolve_key(key)
        keys.add(name if section is None else f"{section}.{name}")
    return keys


def load_model(args: argparse.Namespace, cfg: RunConfig, env: Any) -> tuple[Any, Any, float, dict, str]:
    """The model of ``args.checkpoint`` or ``args.artifact`` on its device (``cfg.model`` set from
    it), the device, the load time in seconds, the run's identity record (tokenizer, ``seq_len``,
    validation shards; :func:`pgolf.data.identity.run_identity`) and a name of the source."""
    from pgolf.artifact.export import load_exported_with_meta
    from pgolf.model.gpt import GPT
    from pgolf.train.checkpoint import load_checkpoint, pgolf_checkpoint
    from pgolf.util.device import pick_device

    device = pick_device(cfg.train.device, env)
    t0 = time.perf_counter()
    if args.checkpoint:
        source = f"checkpoint {args.checkpoint}"
        ck = pgolf_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
        saved = RunConfig.from_dict(ck["config"])
        model = GPT(saved.model)
        model.load_state_dict(ck["model"])
        cfg.model = saved.model
        record = ck.get("identity") or {"seq_len": saved.train.seq_len}
    else:
        source = f"artifact {args.artifact}"
        model, meta = load_exported_with_meta(args.artifact)
        cfg.model = model.cfg
        record = meta.get("identity") or {}
    return model.to(device), device, time.perf_counter() - t0, record, source


def load_for_eval(args: argparse.Namespace, cfg: RunConfig, env: Any) -> Loaded:
    """Load the checkpoint or artifact of ``args`` and the validation stream.

    The run's record (tokenizer identity, ``seq_len``, validation shards, stored in the checkpoint
    and the artifact) supplies what is not given; a different tokenizer (or shards made by one) is
    refused, and a ``seq_len`` set with ``--set train.seq_len`` that differs from the record is
    printed as an override."""
    import numpy as np
    import torch

    from pgolf.data.identity import (
        check_dataset,
        check_tokenizer,
        check_val_split,
        tokenizer_identity,
    )
    from pgolf.data.shards import load_tokens
    from pgolf.data.tokenizer import byte_table, load_tokenizer
    from pgolf.pipeline import check_val_size

    model, device, load_seconds, record, source = load_model(args, cfg, env)
    explicit = _explicit_keys(args)
    if not record.get("tokenizer"):
        print(f"pgolf eval: warning: {source} records no tokenizer identity (an older pgolf wrote it); "
              "the tokenizer cannot be checked", file=sys.stderr)
    seq_len = record.get("seq_len") or cfg.train.seq_len
    if seq_len != cfg.train.seq_len and "train.seq_len" in explicit:
        print(f"pgolf eval: overriding the seq_len {seq_len} recorded in {source} with "
              f"train.seq_len={cfg.train.seq_len}", file=sys.stderr)
        seq_len = cfg.train.seq_len
    cfg.train.seq_len = seq_len
    cfg.train.val_batch_size = max(cfg.train.val_batch_size, seq_len)
    recorded_tok = (record.get("tokenizer") or {}).get("path")
    tokenizer = args.tokenizer or (recorded_tok if recorded_tok and os.path.isfile(recorded_tok) else cfg.data.tokenizer)
    val_glob = args.val_glob or record.get("val_glob") or cfg.data.val_glob
    bytes_glob = cfg.data.val_bytes_glob if "data.val_bytes_glob" in explicit else record.get("val_bytes_glob", "")
    sp = load_tokenizer(tokenizer)
    vocab = int(sp.vocab_size())
    tok = tokenizer_identity(tokenizer, vocab)
    check_tokenizer(record.get("tokenizer"), tok, what=source)  # the more telling refusal comes first
    cfg.validate(tokenizer_vocab=vocab)
    val_set = check_dataset(val_glob, tok, verify=cfg.data.verify_manifest, small_val_split=cfg.data.small_val_split)
    check_val_split(val_set)
    tokens = torch.from_numpy(load_tokens(val_glob, vocab_size=vocab).astype(np.int64))
    check_val_size(len(tokens), seq_len, val_glob)
    byte_counts = torch.from_numpy(load_tokens(bytes_glob).astype(np.int64)) if bytes_glob else None
    return Loaded(cfg, model, tokens, byte_table(sp, cfg.model.vocab_size), byte_counts, device, load_seconds)


def per_token_paths(out: str | None, modes: list[str]) -> dict[str, str]:
    """Where ``--per-token-out`` puts each mode's per-token scores: ``out`` itself for one mode, else
    ``out.MODE``; none without it."""
    if not out:
        return {}
    return {mode: out if len(modes) == 1 else f"{out}.{mode}" for mode in modes}


def run_eval(args: argparse.Namespace, cfg: RunConfig, env: Any) -> int:
    """Score in every mode of ``eval.mode``; print one line per mode (and its time split)."""
    import torch
    import torch.distributed as dist

    from pgolf.eval.modes import evaluate_modes, result_lines
    from pgolf.util.device import pick_device

    per_token = per_token_paths(args.per_token_out, cfg.eval_modes())
    for path in per_token.values():
        refuse_folder("--per-token-out", path)
    if env.distributed and not dist.is_initialized():
        device = pick_device(cfg.train.device, env)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        x = load_for_eval(args, cfg, env)
        results = evaluate_modes(x.model, x.tokens, x.table, cfg, device=x.device, byte_counts=x.byte_counts,
                                 rank=env.rank, world_size=env.world_size, record=bool(args.per_token_out))
        for mode, r in results.items():
            if not (math.isfinite(r.score.loss) and math.isfinite(r.score.bpb)):
                raise RuntimeError(f"mode {mode} scores val_loss {r.score.loss} / val_bpb {r.score.bpb}: the "
                                   f"weights are broken")
        if env.master:
            for mode, r in results.items():
                s = r.score
                print(f"mode:{mode} val_loss:{s.loss:.8f} val_bpb:{s.bpb:.8f} tokens:{s.tokens} bytes:{s.bytes}")
            for line in result_lines(results, "eval", x.load_seconds):
                if "_exact " not in line:  # the time split; the scores are printed above
                    print(line)
            for mode, path in per_token.items():
                results[mode].record.write(path, x.tokens)
                print(f"per-token scores of mode {mode}: {path}")
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return 0


def run_audit(args: argparse.Namespace, cfg: RunConfig, env: Any) -> int:
    """Audit every mode of ``eval.mode`` (its predictor stack on the model); exit 1 when a rule fails."""
    from pgolf.eval.audit import audit
    from pgolf.eval.modes import geometry_for, predictor_for
    from pgolf.util.atomic import atomic_write_text

    if env.distributed:
        raise ValueError("pgolf audit runs in one process; drop torchrun")
    refuse_folder("--json", args.json)
    x = load_for_eval(args, cfg, env)
    x.model.eval()
    tokens = x.tokens[: args.max_tokens + 1] if args.max_tokens else x.tokens
    counts = None if x.byte_counts is None else x.byte_counts[: len(tokens)]
    reports = []
    for mode in cfg.eval_modes():
        report = audit(lambda mode=mode: predictor_for(cfg, mode, x.model, x.device, tokens=tokens), tokens, x.table,
                       geometry_for(cfg, mode), byte_counts=counts, num_positions=args.positions, seed=args.seed,
                       bos_id=cfg.eval.bos_id, device=x.device,
                       batch_tokens=cfg.eval.batch_tokens or cfg.train.val_batch_size,
                       batch_lanes=cfg.eval.batch_docs, pack_rows=cfg.eval.pack_rows, tolerance=args.tolerance)
        report.mode = mode  # the geometry's name, with its predictors
        print(report.table())
        reports.append(report)
    if args.json:
        atomic_write_text(args.json, "[\n" + ",\n".join(r.to_json() for r in reports) + "\n]\n")
        print(f"audit JSON: {args.json}")
    return 0 if all(r.passed for r in reports) else 1


def add_arguments(eval_parser: argparse.ArgumentParser, audit_parser: argparse.ArgumentParser) -> None:
    """Arguments of both subcommands (the config arguments are added by the caller)."""
    add_source_arguments(eval_parser)
    eval_parser.add_argument("--per-token-out", metavar="FILE",
                             help="write position, target, nll, bytes, seq of every scored token (TSV)")
    add_source_arguments(audit_parser)
    audit_parser.add_argument("--max-tokens", type=at_least(int, 0), default=8192,
                              help="audit the first N validation targets (0: all; each check reruns the eval)")
    audit_parser.add_argument("--positions", type=at_least(int, 1), default=6,
                              help="positions to change (causality checks)")
    audit_parser.add_argument("--seed", type=at_least(int, 0), default=0)
    audit_parser.add_argument("--tolerance", type=at_least(float, 0.0), default=0.0,
                              help="allowed score difference (0 = bitwise, right on a CPU; set one for GPU runs)")
    audit_parser.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON")
