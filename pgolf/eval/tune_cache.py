"""Choosing the neural cache's ``theta``, ``lam`` and ``window`` without touching validation.

:func:`held_out_training_tokens` takes the last tokens of the last training shard (training reads
the shards from the start, so a short run never reaches them; the caller says how many);
:func:`tune_cache` scores that slice in a cache mode for every point of a grid and returns the
point of lowest bits per byte. ``pgolf tune-cache`` writes it into a run's config (``cache.*``).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pgolf.config import RunConfig, split_mode
from pgolf.data.shards import read_shard, shard_files
from pgolf.data.tokenizer import ByteTable
from pgolf.eval.engine import evaluate_geometry
from pgolf.eval.modes import geometry_for, predictor_for
from pgolf.model.gpt import GPT


def held_out_training_tokens(train_glob: str, count: int, *, vocab_size: int) -> torch.Tensor:
    """The last ``count + 1`` tokens (``count`` targets) of the last shard matching ``train_glob``."""
    if count < 1:
        raise ValueError(f"the tuning slice needs at least one target, got {count} tokens")
    last = read_shard(shard_files(train_glob)[-1], vocab_size=vocab_size)
    if len(last) < count + 1:
        raise ValueError(f"the last training shard holds {len(last)} tokens; the tuning slice asks for {count + 1}")
    return torch.from_numpy(np.asarray(last[-(count + 1):]).astype(np.int64))


@dataclass
class TuneResult:
    """The grid's scores (``(theta, lam, window) -> bpb``), the best point and the plain model's bpb."""

    mode: str
    plain_bpb: float
    scores: dict[tuple[float, float, int], float] = field(default_factory=dict)

    @property
    def best(self) -> tuple[float, float, int]:
        return min(self.scores, key=lambda k: self.scores[k])


def tune_cache(model: GPT, tokens: torch.Tensor, table: ByteTable, cfg: RunConfig, mode: str, *,
               thetas: Sequence[float], lams: Sequence[float], windows: Sequence[int],
               device: torch.device) -> TuneResult:
    """Score ``tokens`` in ``mode`` (which must stack ``cache``) for each ``(theta, lam, window)``; every
    point is validated (:class:`ConfigError` naming the ``cache.*`` key) before anything is scored."""
    if "cache" not in split_mode(mode)[1]:
        raise ValueError(f"tune-cache scores a cache mode (e.g. cache, flat+cache), got {mode!r}")
    trials = {}
    for theta, lam, window in itertools.product(thetas, lams, windows):
        trial = copy.deepcopy(cfg)
        trial.cache.theta, trial.cache.lam, trial.cache.window = float(theta), float(lam), int(window)
        trials[(float(theta), float(lam), int(window))] = trial.validate()
    if not trials:
        raise ValueError("tune-cache needs at least one theta, one lam and one window to try")
    geometry = geometry_for(cfg, mode)
    kw = dict(byte_counts=None, device=device, batch_tokens=cfg.eval.batch_tokens or cfg.train.val_batch_size,
              batch_lanes=cfg.eval.batch_docs)
    plain_mode = "+".join([split_mode(mode)[0], *(n for n in split_mode(mode)[1] if n != "cache")])
    plain = evaluate_geometry(geometry, predictor_for(cfg, plain_mode, model, device), tokens, table, **kw)
    result = TuneResult(mode=mode, plain_bpb=plain.score.bpb)
    for point, trial in trials.items():
        res = evaluate_geometry(geometry, predictor_for(trial, mode, model, device), tokens, table, **kw)
        result.scores[point] = res.score.bpb
    return result
