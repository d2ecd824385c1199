"""Scoring a model on the validation stream in non-overlapping windows (exact val_bpb), and the
unigram yardstick."""
from __future__ import annotations

import numpy as np
import torch

from pgolf.data.tokenizer import ByteTable
from pgolf.eval.scoring import Score, score_stream, token_bytes
from pgolf.model.gpt import GPT
from pgolf.util.device import autocast_for


def evaluate(model: GPT, tokens: torch.Tensor | np.ndarray, table: ByteTable | None, *, seq_len: int,
             batch_tokens: int, device: torch.device, rank: int = 0, world_size: int = 1,
             byte_counts: torch.Tensor | np.ndarray | None = None, max_tokens: int = 0) -> Score:
    """Score every target of ``tokens`` (or of its first ``max_tokens + 1`` when capped) once.

    Windows of ``seq_len`` targets, ``batch_tokens // seq_len`` windows per forward, spread over
    ranks; NLL summed in float64 and all-reduced (see :func:`pgolf.eval.scoring.score_stream`).
    """
    if max_tokens and len(tokens) > max_tokens + 1:
        tokens = tokens[: max_tokens + 1]
        byte_counts = None if byte_counts is None else byte_counts[: max_tokens + 1]

    def nll_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_for(device):
            return model.token_nll(x, y)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return score_stream(nll_fn, tokens, seq_len=seq_len, batch_seqs=max(1, batch_tokens // seq_len),
                                table=table, byte_counts=byte_counts, rank=rank, world_size=world_size,
                                device=device)
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
