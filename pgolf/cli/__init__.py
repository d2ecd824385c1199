"""The ``pgolf`` command: ``train``, ``eval``, ``audit``, ``tune-cache``, ``data``, ``config`` and ``submit``.

This is the only place that reads the environment: torchrun's ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` and the official ``train_gpt.py`` variable names (``ITERATIONS=...``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pgolf.cli import data as data_cmd
from pgolf.cli import evaluate as eval_cmd
from pgolf.cli import submit as submit_cmd
from pgolf.cli import tune as tune_cmd
from pgolf.config import PRESETS, ConfigError, RunConfig, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                   help="named starting point: demo (CPU), gpu-demo, baseline (= official train_gpt.py)")
    p.add_argument("--config", metavar="FILE", help="JSON file of overrides ({'model': {...}, 'train': {...}})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value, e.g. --set model.num_layers=4 or --set iterations=100 (repeatable)")
    p.add_argument("--run-dir", help="where logs, checkpoints and the artifact go (train.run_dir)")


def _resolve(args: argparse.Namespace) -> RunConfig:
    sets = list(args.sets) + ([f"train.run_dir={args.run_dir}"] if args.run_dir is not None else [])
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
    """``pgolf eval``: score a checkpoint or an artifact in every ``eval.mode``; prints
    ``mode:... val_loss:... val_bpb:... tokens:... bytes:...`` per mode (works under torchrun)."""
    from pgolf.util.device import DistEnv

    args.sets = list(args.sets) + eval_cmd.eval_sets(args)
    return eval_cmd.run_eval(args, _resolve(args), DistEnv.from_environ(os.environ))


def cmd_audit(args: argparse.Namespace) -> int:
    """``pgolf audit``: the legality checks of each ``eval.mode`` (its predictors on the model); exit 1 on a failure."""
    from pgolf.util.device import DistEnv

    args.sets = list(args.sets) + eval_cmd.eval_sets(args)
    return eval_cmd.run_audit(args, _resolve(args), DistEnv.from_environ(os.environ))


def cmd_tune_cache(args: argparse.Namespace) -> int:
    """``pgolf tune-cache``: choose cache.theta / lam / window on training tokens; write them to a config."""
    from pgolf.util.device import DistEnv

    return tune_cmd.run(args, _resolve(args), DistEnv.from_environ(os.environ))


def build_parser() -> argparse.ArgumentParser:
    """The ``pgolf`` argument parser with its six subcommands."""
    parser = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf engine: data, train, eval.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, export the artifact, reload it and print the score")
    _add_config_args(p)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    again.add_argument("--overwrite", action="store_true", help="start over even if RUN_DIR holds a checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a checkpoint or an artifact on validation shards (flat, sliding, doc)")
    _add_config_args(p)
    q = sub.add_parser("audit", help="check that an eval mode is legal: causality, normalisation, single pass, ...")
    _add_config_args(q)
    eval_cmd.add_arguments(p, q)
    p.set_defaults(func=cmd_eval)
    q.set_defaults(func=cmd_audit)

    p = sub.add_parser("tune-cache", help="choose the neural cache's theta, lam, window on held-out training tokens")
    _add_config_args(p)
    tune_cmd.add_arguments(p)
    p.set_defaults(func=cmd_tune_cache)

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
