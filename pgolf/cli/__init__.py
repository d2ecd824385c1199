"""The ``pgolf`` command: ``train``, ``eval``, ``data``, ``config`` and ``submit``.

This is the only place that reads the environment: torchrun's ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` and the official ``train_gpt.py`` variable names (``ITERATIONS=...``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pgolf.cli import data as data_cmd
from pgolf.cli import submit as submit_cmd
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


def cmd_eval(args: argparse.Namespace) -> int:
    """``pgolf eval``: score a checkpoint or an artifact on validation shards; prints
    ``val_loss:... val_bpb:... tokens:... bytes:...``."""
    import numpy as np
    import torch

    from pgolf.artifact.export import load_exported
    from pgolf.config import ModelConfig
    from pgolf.data.shards import load_tokens
    from pgolf.data.tokenizer import byte_table, load_tokenizer
    from pgolf.eval.flat import evaluate
    from pgolf.model.gpt import GPT
    from pgolf.train.checkpoint import load_checkpoint
    from pgolf.util.device import DistEnv, pick_device

    env = DistEnv.from_environ(os.environ)
    if env.distributed:
        raise ConfigError("pgolf eval runs in one process; drop torchrun")
    cfg = _resolve(args)
    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        saved = RunConfig.from_dict(ck["config"])
        model = GPT(ModelConfig(**saved.model.__dict__))
        model.load_state_dict(ck["model"])
        cfg.model = saved.model
    else:
        model = load_exported(args.artifact)
        cfg.model = model.cfg
    val_glob = args.val_glob or cfg.data.val_glob
    tokenizer = args.tokenizer or cfg.data.tokenizer
    device = pick_device(cfg.train.device, env)
    model = model.to(device)
    sp = load_tokenizer(tokenizer)
    cfg.validate(tokenizer_vocab=int(sp.vocab_size()))
    tokens = torch.from_numpy(load_tokens(val_glob, vocab_size=cfg.model.vocab_size).astype(np.int64))
    score = evaluate(model, tokens, byte_table(sp, cfg.model.vocab_size), seq_len=cfg.train.seq_len,
                     batch_tokens=cfg.train.val_batch_size, device=device)
    print(f"val_loss:{score.loss:.8f} val_bpb:{score.bpb:.8f} tokens:{score.tokens} bytes:{score.bytes}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pgolf`` argument parser with its five subcommands."""
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

    p = sub.add_parser("submit", help="turn a finished run into a records folder whose train_gpt.py runs without pgolf")
    submit_cmd.add_arguments(p)
    p.set_defaults(func=submit_cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``pgolf`` command; returns the exit code (2 for config errors, 1 for other errors)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"pgolf: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"pgolf: error: {e}", file=sys.stderr)
        return 1
