"""Scoring a model in the configured modes (``eval.mode``), with warm-up and the time split.

Used by the final report (:mod:`pgolf.pipeline`) and ``pgolf eval``. For each mode: a warm-up
of the same geometry on random tokens (never validation data), then the scoring, with the
engine's split into scoring and adaptation time; artifact load time is the caller's.

A mode is a geometry and the predictors stacked on the model (:func:`pgolf.config.split_mode`:
``doc``, ``cache`` = ``doc+cache``, ``flat+cache``, ``ttt+cache``). :data:`STACKABLE` maps each
predictor name to a factory ``(inner, model, cfg, device) -> predictor`` that wraps (or, for a
predictor that adapts the model itself, replaces) the predictor below it: the seam where
test-time training plugs in, as ``"ttt"`` (also added to :data:`pgolf.config.PREDICTORS`), with a
predictor that implements ``log_probs_and_hidden`` so that ``ttt+cache`` caches the adapted
model's hidden states.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from pgolf.config import RunConfig, split_mode
from pgolf.data.tokenizer import ByteTable
from pgolf.eval.engine import EvalResult, evaluate_geometry
from pgolf.eval.geometry import Geometry, make_geometry
from pgolf.eval.predictor import PlainModel, Predictor
from pgolf.model.gpt import GPT
from pgolf.util.device import sync


def _neural_cache(inner: Predictor, model: GPT, cfg: RunConfig, device: torch.device) -> Predictor:
    from pgolf.eval.cache import NeuralCache  # imported only by a mode with a cache (pgolf submit leaves it out)

    return NeuralCache.from_config(inner, cfg.cache, cfg.model.vocab_size)


STACKABLE = {"cache": _neural_cache}


def geometry_for(cfg: RunConfig, mode: str) -> Geometry:
    """The geometry of ``mode`` with the ``eval.*`` parameters of ``cfg``."""
    return make_geometry(split_mode(mode)[0], window=cfg.eval_window(), stride=cfg.eval.stride,
                         chunk=cfg.eval.chunk, bos_id=cfg.eval.bos_id)


def predictor_for(cfg: RunConfig, mode: str, model: GPT, device: torch.device, *, tokens: Any = None,
                  rank: int = 0, world_size: int = 1) -> Predictor:
    """A fresh predictor of ``mode`` on ``tokens``: the base -- LoRA TTT when the mode names ``ttt``
    (it adapts the model itself, so it must come first; it needs the stream's plan), else the plain
    model -- with the mode's other predictors (:data:`STACKABLE`) stacked on it, innermost first."""
    names = list(split_mode(mode)[1])
    if "ttt" in names[1:]:
        raise ValueError(f"eval mode {mode!r}: ttt adapts the model itself and must come first (e.g. ttt+cache)")
    if names[:1] == ["ttt"]:
        from pgolf.eval.ttt import make_ttt  # imported only by a TTT mode (pgolf submit leaves it out)

        names.pop(0)
        plan = geometry_for(cfg, mode).plan(torch.as_tensor(np.asarray(tokens)))
        predictor: Predictor = make_ttt(model, cfg.ttt, plan, device, batch_docs=cfg.eval.batch_docs,
                                        window=cfg.eval_window(), rank=rank, world_size=world_size)
    else:
        predictor = PlainModel(model, device)
    for name in names:
        if name not in STACKABLE:
            raise ValueError(f"eval mode {mode!r}: no predictor named {name!r}; known: ttt, {', '.join(STACKABLE)}")
        predictor = STACKABLE[name](predictor, model, cfg, device)
    return predictor


def random_stream(cfg: RunConfig, length: int, seed: int = 0) -> torch.Tensor:
    """Random tokens with a BOS every ``window // 2`` (so ``doc`` finds documents): warm-up input."""
    gen = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, cfg.model.vocab_size, (length,), generator=gen)
    toks[toks == cfg.eval.bos_id] = (cfg.eval.bos_id + 1) % cfg.model.vocab_size
    toks[:: max(cfg.eval_window() // 2, 1)] = cfg.eval.bos_id
    return toks


def evaluate_modes(model: GPT, tokens: Any, table: ByteTable | None, cfg: RunConfig, *, device: torch.device,
                   byte_counts: Any = None, rank: int = 0, world_size: int = 1,
                   record: bool = False) -> dict[str, EvalResult]:
    """Score ``model`` in every mode of ``cfg.eval.mode`` (:func:`predictor_for`; the plain model is
    the time budget's fallback). Each result's ``seconds`` holds ``warmup``, ``score`` and ``adapt``;
    ``counts`` the predictor's counters (TTT fallbacks)."""
    was_training = model.training
    model.eval()
    plain = PlainModel(model, device)
    batch_tokens = cfg.eval.batch_tokens or cfg.train.val_batch_size
    kw = dict(device=device, batch_tokens=batch_tokens, batch_lanes=cfg.eval.batch_docs, rank=rank,
              world_size=world_size, max_seconds=cfg.eval.max_seconds, fallback=plain)
    results = {}
    try:
        for mode in cfg.eval_modes():
            geometry = geometry_for(cfg, mode)
            t0 = time.perf_counter()
            warm = random_stream(cfg, min(len(tokens), 2 * cfg.eval_window() + 1))
            evaluate_geometry(geometry, predictor_for(cfg, mode, model, device, tokens=warm, rank=rank,
                                                      world_size=world_size),
                              warm, byte_counts=np.ones(len(warm), np.int64), **kw)
            sync(device)
            warmup = time.perf_counter() - t0
            predictor = predictor_for(cfg, mode, model, device, tokens=tokens, rank=rank, world_size=world_size)
            res = evaluate_geometry(geometry, predictor, tokens, table, byte_counts=byte_counts, record=record, **kw)
            res.mode = mode
            res.counts = dict(getattr(predictor, "counts", {}))
            res.seconds["warmup"] = warmup
            results[mode] = res
    finally:
        model.train(was_training)
    return results


def result_lines(results: dict[str, EvalResult], tag: str, load_seconds: float) -> list[str]:
    """One official-style line per mode (``{tag}_{mode}_exact val_loss:... val_bpb:...``) and its timing."""
    lines = []
    for mode, r in results.items():
        s = r.score
        lines.append(f"{tag}_{mode}_exact val_loss:{s.loss:.8f} val_bpb:{s.bpb:.8f}")
        sec = r.seconds
        lines.append(f"eval_{mode} tokens:{s.tokens} chunks:{r.chunks} load:{1000 * load_seconds:.0f}ms "
                     f"warmup:{1000 * sec['warmup']:.0f}ms score:{1000 * sec['score']:.0f}ms "
                     f"adapt:{1000 * sec['adapt']:.0f}ms fallback_tokens:{r.fallback_tokens}"
                     + "".join(f" {k}:{v}" for k, v in r.counts.items()))
    return lines
