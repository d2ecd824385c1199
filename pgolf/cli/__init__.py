"""The ``pgolf`` command: ``train``, ``eval``, ``data`` and ``config``.

This is the only place that reads the environment: torchrun's ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` and the official ``train_gpt.py`` variable names (``ITERATIONS=...``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pgolf.cli import data as data_cmd
from pgolf.config import PRESETS, ConfigError, RunConfig, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                   help="named starting point: demo (CPU), gpu-demo, baseline (= official train_gpt.py)")
    p.add_argument("--config", metavar="FILE", help="JSON file of overrides ({'model': {...}, 'train': {...}})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value, e.g. --set model.num_layers=4 or --set iterations=100 (repeatable)")
    p.add_argument("--run-dir", help="where logs, checkpoints and the artifact go (train.run_dir)")


def _resolve(args: argparse.Namespace) -> RunConfig:
    sets = list(args.sets) + ([f"train.run_dir={args.run_dir}"] if args.run_dir else [])
    return load_config(args.preset, file=args.config, environ=os.environ, sets=sets)


def cmd_train(args: argparse.Namespace) -> int:
    """``pgolf train``: train, export the artifact, reload it and print the official-style score."""
    from pgolf.pipeline import run_training
    from pgolf.util.device import DistEnv

    cfg = _resolve(args)
    run_training(cfg, DistEnv.from_environ(os.environ), resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``pgolf config``: print the resolved configuration as JSON."""
    print(json.dumps(_resolve(args).to_dict(), indent=2))
    return 0


def _explicit_keys(args: argparse.Namespace) -> set[str]:
    """The ``section.key`` names the user set on purpose (``--set`` and official env names)."""
    from pgolf.config import env_overrides, resolve_key

    keys = set()
    for key in [item.partition("=")[0].strip() for item in args.sets] + list(env_overrides(os.environ)):
        section, name = resolve_key(key)
        keys.add(name if section is None else f"{section}.{name}")
    return keys


def cmd_eval(args: argparse.Namespace) -> int:
    """``pgolf eval``: score a checkpoint or an artifact on validation shards; prints
    ``val_loss:... val_bpb:... tokens:... bytes:...``.

    The run's record (tokenizer identity, ``seq_len``, validation shards, stored in the checkpoint
    and the artifact) supplies what is not given; a different tokenizer is refused, and a
    ``seq_len`` set with ``--set train.seq_len`` that differs from the record is printed."""
    import math

    import numpy as np
    import torch

    from pgolf.artifact.export import load_exported_with_meta
    from pgolf.data.identity import check_dataset, check_tokenizer, tokenizer_identity
    from pgolf.data.shards import load_tokens
    from pgolf.data.tokenizer import byte_table, load_tokenizer
    from pgolf.eval.flat import evaluate
    from pgolf.model.gpt import GPT
    from pgolf.pipeline import check_val_size
    from pgolf.train.checkpoint import load_checkpoint, pgolf_checkpoint
    from pgolf.util.device import DistEnv, pick_device

    env = DistEnv.from_environ(os.environ)
    if env.distributed:
        raise ConfigError("pgolf eval runs in one process; drop torchrun")
    cfg = _resolve(args)
    explicit = _explicit_keys(args)
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
    if not record.get("tokenizer"):
        print(f"pgolf eval: warning: {source} records no tokenizer identity (an older pgolf wrote it); "
              "the tokenizer cannot be checked", file=sys.stderr)
    seq_len = record.get("seq_len") or cfg.train.seq_len
    if seq_len != cfg.train.seq_len and "train.seq_len" in explicit:
        print(f"pgolf eval: overriding the seq_len {seq_len} recorded in {source} with "
              f"train.seq_len={cfg.train.seq_len}", file=sys.stderr)
        seq_len = cfg.train.seq_len
    recorded_tok = (record.get("tokenizer") or {}).get("path")
    tokenizer = args.tokenizer or (recorded_tok if recorded_tok and os.path.isfile(recorded_tok) else cfg.data.tokenizer)
    val_glob = args.val_glob or record.get("val_glob") or cfg.data.val_glob
    bytes_glob = cfg.data.val_bytes_glob if "data.val_bytes_glob" in explicit else record.get("val_bytes_glob", "")
    device = pick_device(cfg.train.device, env)
    model = model.to(device)
    sp = load_tokenizer(tokenizer)
    vocab = int(sp.vocab_size())
    cfg.validate(tokenizer_vocab=vocab)
    tok = tokenizer_identity(tokenizer, vocab)
    check_tokenizer(record.get("tokenizer"), tok, what=source)
    check_dataset(val_glob, tok, verify=cfg.data.verify_manifest)
    tokens = torch.from_numpy(load_tokens(val_glob, vocab_size=vocab).astype(np.int64))
    check_val_size(len(tokens), seq_len, val_glob)
    byte_counts = torch.from_numpy(load_tokens(bytes_glob).astype(np.int64)) if bytes_glob else None
    score = evaluate(model, tokens, byte_table(sp, cfg.model.vocab_size), seq_len=seq_len,
                     batch_tokens=max(cfg.train.val_batch_size, seq_len), device=device,
                     byte_counts=byte_counts)
    if not (math.isfinite(score.loss) and math.isfinite(score.bpb)):
        raise RuntimeError(f"{source} scores val_loss {score.loss} / val_bpb {score.bpb}: its weights are broken")
    print(f"val_loss:{score.loss:.8f} val_bpb:{score.bpb:.8f} tokens:{score.tokens} bytes:{score.bytes}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pgolf`` argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf engine: data, train, eval.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, export the artifact, reload it and print the score")
    _add_config_args(p)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    again.add_argument("--overwrite", action="store_true", help="start over even if RUN_DIR holds a checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a checkpoint or an artifact on validation shards")
    _add_config_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint.pt written by pgolf train")
    src.add_argument("--artifact", help="an artifact (model.pgolf) written by pgolf train")
    p.add_argument("--val-glob", help="validation shards (default: the preset's data.val_glob)")
    p.add_argument("--tokenizer", help="SentencePiece model (default: the preset's data.tokenizer)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="build train/val shards (and optionally a tokenizer) from text")
    data_cmd.add_arguments(p)
    p.set_defaults(func=data_cmd.run)

    p = sub.add_parser("config", help="print the resolved configuration as JSON")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``pgolf`` command; returns the exit code: 2 for config errors, 1 for other errors
    (bad data, files, checkpoints, a run that failed), 130 for SIGINT outside the training loop
    (a signal during training saves a checkpoint and exits 128 + its number)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"pgolf: config error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as e:
        print(f"pgolf: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pgolf: error: interrupted outside the training loop; no score was written (a checkpoint saved "
              "earlier, if any, is kept)", file=sys.stderr)
        return 130
