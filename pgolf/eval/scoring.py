"""Exact val_bpb: bits per byte of the validation text.

For the validation stream ``t_0 .. t_M`` every target ``y = t_i`` (``i >= 1``) with previous
token ``x = t_{i-1}`` is scored exactly once::

    bytes(y) = base_bytes[y] + (has_leading_space[y] and not is_boundary[x])
    val_bpb  = sum_i NLL_i / (ln 2 * sum_i bytes(t_i))          (NLL in nats)

with both sums accumulated in float64 and summed over ranks. ``bytes`` comes from a
:class:`~pgolf.data.tokenizer.ByteTable`, or from a per-token byte sidecar (``byte_counts[i]``
is the byte count of ``t_i``) for tokenizers that transform the text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from pgolf.data.tokenizer import ByteTable


def token_bytes(prev_ids: torch.Tensor, target_ids: torch.Tensor, table: ByteTable) -> torch.Tensor:
    """``bytes(y) = base_bytes[y] + (has_leading_space[y] & ~is_boundary[x])`` as int64, elementwise."""
    table = table.to(target_ids.device)
    space = table.has_leading_space[target_ids] & ~table.is_boundary[prev_ids]
    return table.base_bytes[target_ids].to(torch.int64) + space.to(torch.int64)


@dataclass
class Score:
    """A scored token stream: ``loss = nll / tokens`` (nats/token), ``bpb = nll / (ln 2 * bytes)``."""

    tokens: int
    bytes: int
    loss: float
    bpb: float
    nll: float  # total nats


class BpbAccumulator:
    """Sums NLL (nats), bytes and token counts in float64 across batches and ranks.

    Call :meth:`add` per batch, :meth:`all_reduce` once (a no-op unless torch.distributed is
    initialised), then :meth:`result`. Adding after the reduction, or reducing twice, raises:
    either would count tokens twice.

    With ``slots > 1`` each batch adds into its own slot (``add(..., slot=i)``; one rank writes a
    slot, the others leave it 0) and :meth:`result` sums the slots in order, so the total does
    not depend on which rank scored which slot: the same bits for any number of ranks.
    """

    def __init__(self, table: ByteTable | None = None, *, device: str | torch.device = "cpu", slots: int = 1):
        self.table = None if table is None else table.to(device)
        self.device = torch.device(device)
        self._sums = torch.zeros(slots, 3, dtype=torch.float64, device=self.device)  # nll, bytes, tokens
        self._reduced = False

    def add(self, nll: torch.Tensor, prev_ids: torch.Tensor, target_ids: torch.Tensor,
            byte_counts: torch.Tensor | None = None, *, slot: int = 0) -> None:
        """Add per-token ``nll`` for ``target_ids`` (same shape) into ``slot``. Bytes come from
        ``byte_counts`` (same shape) when given, else from the table and ``prev_ids``."""
        if self._reduced:
            raise RuntimeError("BpbAccumulator.add after all_reduce would mix local and global sums")
        if nll.shape != target_ids.shape or prev_ids.shape != target_ids.shape:
            raise ValueError(f"nll {tuple(nll.shape)}, prev_ids {tuple(prev_ids.shape)} and target_ids "
                             f"{tuple(target_ids.shape)} must have the same shape")
        if byte_counts is None:
            if self.table is None:
                raise ValueError("BpbAccumulator needs a ByteTable or byte_counts")
            byte_counts = token_bytes(prev_ids.to(self.device), target_ids.to(self.device), self.table)
        elif byte_counts.shape != target_ids.shape:
            raise ValueError(f"byte_counts {tuple(byte_counts.shape)} must match target_ids "
                             f"{tuple(target_ids.shape)}")
        sums = self._sums[slot]
        sums[0] += nll.detach().to(self.device, torch.float64).sum()
        sums[1] += byte_counts.to(self.device, torch.float64).sum()
        sums[2] += target_ids.numel()

    def all_reduce(self) -> None:
        """Sum the totals over all ranks (when torch.distributed is initialised); once only."""
        if self._reduced:
            raise RuntimeError("BpbAccumulator.all_reduce called twice would double count")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self._sums, op=torch.distributed.ReduceOp.SUM)
        self._reduced = True

    def result(self) -> Score:
        """The :class:`Score` of everything added (``nan`` loss/bpb when nothing was)."""
        nll = nbytes = ntok = 0.0
        for slot_nll, slot_bytes, slot_tokens in self._sums.cpu().tolist():  # in slot order
            nll, nbytes, ntok = nll + slot_nll, nbytes + slot_bytes, ntok + slot_tokens
        return Score(tokens=int(ntok), bytes=int(nbytes), nll=nll,
                     loss=nll / ntok if ntok else math.nan,
                     bpb=nll / (math.log(2) * nbytes) if nbytes else math.nan)


def one_d_stream(values: Any, name: str) -> np.ndarray | torch.Tensor:
    """A 1-D token (or byte count) stream, left as it is (e.g. a memmap) so only slices are copied."""
    stream = values if isinstance(values, torch.Tensor) else np.asarray(values)
    if stream.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(stream.shape)}")
    return stream


def checked_streams(tokens: Any, byte_counts: Any, table: ByteTable | None,
                    caller: str) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor | None]:
    """``(tokens, byte_counts)`` as 1-D streams (:func:`one_d_stream`): a per-token byte sidecar must have one
    entry per token, and without one a :class:`ByteTable` is needed. Raises ``ValueError`` naming the
    problem (``caller`` names the function that needs the table)."""
    toks = one_d_stream(tokens, "tokens")
    if byte_counts is not None:
        byte_counts = one_d_stream(byte_counts, "byte_counts")
        if len(byte_counts) != len(toks):
            raise ValueError(f"byte_counts has {len(byte_counts)} entries but the token stream has {len(toks)}; "
                             f"the per-token byte sidecar must have one entry per validation token")
    elif table is None:
        raise ValueError(f"{caller} needs a ByteTable or byte_counts")
    return toks, byte_counts


def _take(stream: np.ndarray | torch.Tensor, start: int, stop: int) -> torch.Tensor:
    part = stream[start:stop]
    if isinstance(part, torch.Tensor):
        return part.to(torch.int64)
    return torch.from_numpy(np.asarray(part, dtype=np.int64))


def window_range(num_windows: int, rank: int, world_size: int) -> range:
    """The contiguous block of window indices scored by ``rank``: ``[w*r//W, w*(r+1)//W)``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return range(num_windows * rank // world_size, num_windows * (rank + 1) // world_size)


def score_stream(nll_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokens: Any, *,
                 seq_len: int, batch_seqs: int, table: ByteTable | None = None, byte_counts: Any = None,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu") -> Score:
    """Score every target of a 1-D token stream exactly once and return the global :class:`Score`.

    The ``M = len(tokens) - 1`` targets ``tokens[1:]`` are cut into ``ceil(M / seq_len)``
    non-overlapping windows; window ``k`` has inputs ``x = tokens[k*T : k*T+L]`` and targets
    ``y = tokens[k*T+1 : k*T+L+1]`` with ``L = min(T, M - k*T)``, so the last window may be
    shorter (it runs as its own batch: no tail is dropped). Rank ``r`` of ``W`` scores the
    windows :func:`window_range` gives it, ``batch_seqs`` at a time, through
    ``nll_fn(x, y) -> [B, T]`` per-token NLL in nats (called under ``torch.no_grad``).
    Totals are all-reduced when torch.distributed is initialised.

    ``byte_counts`` (per-token bytes of the stream, ``len(tokens)`` long) replaces ``table``.
    """
    toks, byte_counts = checked_streams(tokens, byte_counts, table, "score_stream")
    if seq_len <= 0 or batch_seqs <= 0:
        raise ValueError(f"seq_len ({seq_len}) and batch_seqs ({batch_seqs}) must be positive")
    num_targets = max(len(toks) - 1, 0)
    windows = window_range(-(-num_targets // seq_len), rank, world_size)
    full_end = min(windows.stop, num_targets // seq_len)  # windows before this one are full
    batches = [range(s, min(s + batch_seqs, full_end)) for s in range(windows.start, full_end, batch_seqs)]
    if windows.stop > full_end >= windows.start:
        batches.append(range(full_end, full_end + 1))  # the short last window, on its own
    acc = BpbAccumulator(table, device=device)
    with torch.no_grad():
        for batch in batches:
            # The windows of a batch are contiguous in the stream: one slice holds them all.
            start = batch.start * seq_len
            stop = min(batch.stop * seq_len, num_targets)
            shape = (len(batch), (stop - start) // len(batch))
            x = _take(toks, start, stop).view(shape).to(device)
            y = _take(toks, start + 1, stop + 1).view(shape).to(device)
            nll = nll_fn(x, y)
            if tuple(nll.shape) != shape:
                raise ValueError(f"nll_fn returned shape {tuple(nll.shape)}, expected {shape}")
            counts = None if byte_counts is None else _take(byte_counts, start + 1, stop + 1).view(shape)
            acc.add(nll, x, y, counts)
    acc.all_reduce()
    return acc.result()
