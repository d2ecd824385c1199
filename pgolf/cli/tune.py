"""``pgolf tune-cache``: pick the neural cache's theta, lam and window on held-out training tokens.

Reads the model, the tokenizer and the tail of the training stream; never the validation shards.
Writes the chosen ``cache.*`` values into a run config (by default the ``config.json`` next to the
checkpoint or artifact), which ``pgolf eval --config`` then reads.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgolf.cli.args import at_least, refuse_folder
from pgolf.config import RunConfig


def _grid(kind: type) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of at least one ``kind`` (argparse names the flag)."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of at least one "
                                             f"{'whole ' if kind is int else ''}number, got {text!r}")
        return values
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The model, the slice, the grid and where the result goes (config arguments: the caller's)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint.pt written by pgolf train")
    src.add_argument("--artifact", help="an artifact (model.pgolf) written by pgolf train")
    p.add_argument("--tokenizer", help="SentencePiece model (default: the preset's data.tokenizer)")
    p.add_argument("--mode", default="cache", help="the cache mode to tune (default: cache, i.e. doc+cache)")
    p.add_argument("--tokens", type=at_least(int, 1), default=32768,
                   help="targets taken from the end of the last training shard (keep them out of training)")
    p.add_argument("--theta", type=_grid(float), default=[1.0, 3.0, 10.0], help="comma-separated thetas to try")
    p.add_argument("--lam", type=_grid(float), default=[0.02, 0.05, 0.1, 0.2], help="comma-separated lams to try")
    p.add_argument("--window", type=_grid(int), default=[256, 1024, 4096], help="comma-separated windows to try")
    p.add_argument("--out", help="config JSON to write cache.* into (default: config.json beside the model)")


def run(args: argparse.Namespace, cfg: RunConfig, env: Any) -> int:
    """Tune on the training slice, print the grid, write the best values into ``--out``."""
    from pgolf.cli.evaluate import load_model
    from pgolf.data.tokenizer import byte_table, load_tokenizer
    from pgolf.eval.tune_cache import held_out_training_tokens, tune_cache
    from pgolf.util.atomic import atomic_write_text

    if env.distributed:
        raise ValueError("pgolf tune-cache runs in one process; drop torchrun")
    refuse_folder("--out", args.out)
    cfg.set("eval.mode", args.mode)
    model, device, _, _, _ = load_model(args, cfg, env)
    model.eval()
    sp = load_tokenizer(args.tokenizer or cfg.data.tokenizer)
    cfg.validate(tokenizer_vocab=int(sp.vocab_size()))
    tokens = held_out_training_tokens(cfg.data.train_glob, args.tokens, vocab_size=cfg.model.vocab_size)
    result = tune_cache(model, tokens, byte_table(sp, cfg.model.vocab_size), cfg, args.mode, thetas=args.theta,
                        lams=args.lam, windows=args.window, device=device)
    print(f"tune-cache mode:{args.mode} targets:{args.tokens} (end of {cfg.data.train_glob}) "
          f"plain val_bpb:{result.plain_bpb:.6f}")
    for (theta, lam, window), bpb in sorted(result.scores.items()):
        print(f"theta:{theta:g} lam:{lam:g} window:{window} bpb:{bpb:.6f}")
    theta, lam, window = result.best
    out = Path(args.out or Path(args.checkpoint or args.artifact).parent / "config.json")
    saved = json.loads(out.read_text()) if out.exists() else {}
    if not isinstance(saved, dict):
        raise ValueError(f"{out} does not hold a JSON object of config sections; pass another --out")
    saved["cache"] = {**saved.get("cache", {}), **cfg.to_dict()["cache"], "theta": theta, "lam": lam,
                      "window": window}
    atomic_write_text(str(out), json.dumps(saved, indent=2) + "\n")
    print(f"best theta:{theta:g} lam:{lam:g} window:{window} bpb:{result.scores[result.best]:.6f} "
          f"(plain {result.plain_bpb:.6f}); written to {out} (cache.*)")
    return 0
