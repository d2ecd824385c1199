"""Scoring a model on the validation stream in non-overlapping windows (exact val_bpb; the training
loop's periodic validation), and the unigram yardstick."""
from __future__ import annotations

import numpy as np
import torch

from pgolf.data.tokenizer import ByteTable
from pgolf.eval.engine import evaluate_geometry
from pgolf.eval.geometry import Flat
from pgolf.eval.predictor import PlainModel
from pgolf.eval.scoring import Score, token_bytes
from pgolf.model.gpt import GPT


def evaluate(model: GPT, tokens: torch.Tensor | np.ndarray, table: ByteTable | None, *, seq_len: int,
             batch_tokens: int, device: torch.device, rank: int = 0, world_size: int = 1,
             byte_counts: torch.Tensor | np.ndarray | None = None, max_tokens: int = 0) -> Score:
    """Score every target of ``tokens`` (or of its first ``max_tokens + 1`` when capped) once.

    The engine's ``flat`` mode with the plain model: windows of ``seq_len`` targets,
    ``batch_tokens // seq_len`` windows per forward (the short last window on its own), steps
    spread over ranks; NLL summed in float64 per step, all-reduced and added up in step order.
    """
    if max_tokens and len(tokens) > max_tokens + 1:
        tokens = tokens[: max_tokens + 1]
        byte_counts = None if byte_counts is None else byte_counts[: max_tokens + 1]
    was_training = model.training
    model.eval()
    try:
        return evaluate_geometry(Flat(seq_len), PlainModel(model, device), tokens, table, byte_counts=byte_counts,
                                 device=device, batch_tokens=max(1, batch_tokens // seq_len) * seq_len, rank=rank,
                                 world_size=world_size).score
    finally:
        model.train(was_training)


def unigram_bpb(tokens: np.ndarray, table: ByteTable) -> float:
    """Bits per byte of the empirical unigram distribution of the scored targets:
    ``H = -sum_v p_v log2 p_v`` over ``tokens[1:]``, times (#targets / #bytes).

    Any model that learned nothing beyond token frequencies scores about this; a trained
    model must be clearly below it.
    """
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    targets = tokens[1:]
    p = torch.bincount(targets).double()
    p = p[p > 0] / p.sum()
    entropy_bits = float(-(p * p.log2()).sum())
    total_bytes = int(token_bytes(tokens[:-1], targets, table).sum())
    return entropy_bits * len(targets) / total_bytes
