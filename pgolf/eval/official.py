"""The official ``train_gpt.py`` validation sum, for reproducing its printed numbers exactly.

The stream is cut to ``U = floor((len - 1) / T) * T`` targets (the tail that does not fill a
sequence is not scored); rank ``r`` of ``W`` takes sequences ``[n*r//W, n*(r+1)//W)`` of the
``n = U / T``, ``B = batch_tokens // T`` at a time (``batch_tokens``: this rank's batch). Each batch
contributes its mean cross-entropy (the model's float32 ``forward``) times its token count, summed
in float64 and all-reduced with the token and byte counts; then

    val_loss = loss_sum / tokens,   val_bpb = (val_loss / ln 2) * (tokens / bytes)

in that order of float operations. :mod:`pgolf.eval.scoring` is the better number (per-token NLL
summed in float64, every target scored); this one exists so a run can print what the official
script prints.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from pgolf.data.tokenizer import ByteTable
from pgolf.eval.scoring import Score, token_bytes
from pgolf.model.gpt import GPT
from pgolf.util.device import autocast_for


def evaluate_official(model: GPT, tokens: torch.Tensor | np.ndarray, table: ByteTable, *, seq_len: int,
                      batch_tokens: int, device: torch.device, rank: int = 0, world_size: int = 1,
                      max_tokens: int = 0) -> Score:
    """The official summation over ``tokens`` (its first ``max_tokens + 1`` when capped); see the
    module docstring. Raises ``ValueError`` when a rank's batch holds no whole sequence."""
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64)) if not isinstance(tokens, torch.Tensor) else tokens
    if max_tokens and len(tokens) > max_tokens + 1:
        tokens = tokens[: max_tokens + 1]
    if batch_tokens < seq_len:
        raise ValueError(f"the validation batch per rank ({batch_tokens} tokens) holds no sequence of {seq_len}; "
                         f"raise train.val_batch_size")
    num_seqs = (len(tokens) - 1) // seq_len
    if num_seqs <= 0:
        raise ValueError(f"the validation split ({len(tokens)} tokens) is too short for seq_len={seq_len}")
    batch_seqs = batch_tokens // seq_len
    first, last = num_seqs * rank // world_size, num_seqs * (rank + 1) // world_size
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * count, tokens, bytes
    table = table.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(first, last, batch_seqs):
                stop = min(start + batch_seqs, last)
                span = tokens[start * seq_len: stop * seq_len + 1].to(device=device, dtype=torch.int64)
                x, y = span[:-1].reshape(-1, seq_len), span[1:].reshape(-1, seq_len)
                with autocast_for(device):
                    mean_loss = model(x, y).detach()
                count = float(y.numel())
                sums[0] += mean_loss.to(torch.float64) * count
                sums[1] += count
                sums[2] += token_bytes(x.reshape(-1), y.reshape(-1), table).to(torch.float64).sum()
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    loss_sum, count, nbytes = sums[0], sums[1], sums[2]
    val_loss = float((loss_sum / count).item())
    bpb = val_loss / math.log(2.0) * (count.item() / nbytes.item())
    return Score(tokens=int(count.item()), bytes=int(nbytes.item()), loss=val_loss, bpb=bpb, nll=float(loss_sum.item()))
