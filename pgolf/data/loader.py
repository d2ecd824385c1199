"""Deterministic distributed training-token loader over memory-mapped shards.

The shards matching a glob, in sorted order (or a seed-dependent permutation when
``seed != 0``), form one stream ``S`` that wraps around at its end. With ``G`` global tokens
per step, ``T`` tokens per sequence, ``W`` ranks and ``A`` accumulation micro-steps:

* step ``s`` reads the chunk ``C = S[s*G : s*G + G + 1]`` (indices modulo ``len(S)``);
* global sequence ``i`` is ``x_i = C[i*T : (i+1)*T]``, ``y_i = C[i*T+1 : (i+1)*T+1]``;
* with ``n = G / (W*A*T)`` sequences per micro-batch, micro-step ``m`` of rank ``r`` gets
  global sequences ``[(r*A + m)*n, (r*A + m + 1)*n)``.

So the set of sequences a step trains on depends only on ``(seed, shards, s, G, T)``, never
on ``W`` or ``A``, and a resumed run sees exactly the tokens it would have. Only the slices a
batch needs are read (``os.pread`` on files held open, not memory maps: a shard truncated
under a running job then gives a :class:`LoaderError` naming it instead of a bus error; one
rewritten in place, even at the same size, is caught by its size and modification time, checked
with ``fstat`` before every read), and with ``vocab_size`` every batch is checked to hold only
ids below it.

``order="official"`` serves the tokens of the official ``train_gpt.py`` instead: with
``L = G / (W*A)`` tokens per micro-batch, every micro-step (``k = s*A + m`` in the whole run)
takes the next ``W`` spans of ``L + 1`` tokens from the stream, one per rank, so rank ``r`` gets
``S[(k*W + r)*(L+1) : (k*W + r + 1)*(L+1)]`` (inputs its first ``L``, targets its last ``L``
tokens) and one token per span is never a target. The tokens then depend on ``W`` and ``A``; a
resumed run still sees exactly the tokens it would have (the position is a function of ``s``).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch

from pgolf.config.validate import TOKEN_ORDERS
from pgolf.data.shards import HEADER_BYTES, shard_files, shard_token_count


class LoaderError(ValueError):
    """An impossible batch geometry, no tokens, or a state from a different shard list."""


def _order_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def _stamp(handle) -> tuple[int, int]:
    """The size and modification time (ns) of an open file: a rewrite in place changes one of them."""
    st = os.fstat(handle.fileno())
    return st.st_size, st.st_mtime_ns


class TokenLoader:
    """Serves ``(x, y)`` micro-batches of the shards matching ``pattern`` (see module doc)."""

    def __init__(self, pattern: str, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 vocab_size: int | None = None, order: str = "per_step"):
        if not 0 <= rank < world_size:
            raise LoaderError(f"rank {rank} is outside 0..{world_size - 1}")
        if order not in TOKEN_ORDERS:
            raise LoaderError(f"order must be one of {', '.join(TOKEN_ORDERS)}, got {order!r}")
        self.order = order
        files = shard_files(pattern)
        if seed != 0:
            files = sorted(files, key=lambda f: _order_key(seed, f.name))
        self.rank, self.world_size, self.seed, self.vocab_size = rank, world_size, seed, vocab_size
        self.files = files
        self.sizes = [shard_token_count(f) for f in files]
        self._handles = [open(f, "rb") for f in files]
        self._stamps = [_stamp(h) for h in self._handles]
        self.starts = np.cumsum([0] + self.sizes)
        self.total = int(self.starts[-1])
        if self.total == 0:
            raise LoaderError(f"the shards matching {pattern!r} hold no tokens")
        listing = "\n".join(f"{f.name} {n}" for f, n in zip(files, self.sizes))
        self.fingerprint = hashlib.sha256(listing.encode()).hexdigest()

    def _read(self, pos: int, length: int) -> np.ndarray:
        """``S[pos : pos + length]`` as int64, wrapping across shards and the end of the stream."""
        out = np.zeros(length, dtype=np.int64)
        pos %= self.total
        filled = 0
        while filled < length:
            i = int(np.searchsorted(self.starts, pos, side="right")) - 1
            offset = pos - int(self.starts[i])
            take = min(length - filled, self.sizes[i] - offset)
            out[filled:filled + take] = self._tokens(i, offset, take)
            filled += take
            pos = (pos + take) % self.total
        return out

    def _tokens(self, i: int, offset: int, count: int) -> np.ndarray:
        """``count`` tokens of shard ``i`` from ``offset``, checked against the vocabulary."""
        data = os.pread(self._handles[i].fileno(), 2 * count, HEADER_BYTES + 2 * offset)
        if len(data) != 2 * count or _stamp(self._handles[i]) != self._stamps[i]:
            raise LoaderError(f"shard {self.files[i]} changed while it was being read (it held {self.sizes[i]} "
                              "tokens at start); do not rewrite shards under a running job")
        tokens = np.frombuffer(data, dtype="<u2")
        if self.vocab_size is not None and count and int(tokens.max()) >= self.vocab_size:
            j = int(np.flatnonzero(tokens >= self.vocab_size)[0])
            raise LoaderError(f"shard {self.files[i]}: token id {int(tokens[j])} at index {offset + j} is >= "
                              f"vocab_size {self.vocab_size}; these shards were made by a larger tokenizer")
        return tokens

    def next_batch(self, step: int, *, global_tokens: int, seq_len: int, grad_accum_steps: int,
                   micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``micro_step`` batch of ``step``: int64 CPU tensors ``x, y`` of shape
        ``(global_tokens / (world_size * grad_accum_steps * seq_len), seq_len)``."""
        parts = self.world_size * grad_accum_steps
        if step < 0 or not 0 <= micro_step < grad_accum_steps:
            raise LoaderError(f"step {step} must be >= 0 and micro_step {micro_step} in 0..{grad_accum_steps - 1}")
        if global_tokens <= 0 or seq_len <= 0 or global_tokens % (parts * seq_len):
            raise LoaderError(f"global_tokens {global_tokens} must split into whole sequences of {seq_len} "
                              f"over world_size {self.world_size} x grad_accum_steps {grad_accum_steps}")
        n = global_tokens // (parts * seq_len)
        if self.order == "official":
            k = step * grad_accum_steps + micro_step
            span = self._read((k * self.world_size + self.rank) * (n * seq_len + 1), n * seq_len + 1)
        else:
            first = (self.rank * grad_accum_steps + micro_step) * n
            span = self._read(step * global_tokens + first * seq_len, n * seq_len + 1)
        x = torch.from_numpy(span[:-1]).view(n, seq_len)
        y = torch.from_numpy(span[1:].copy()).view(n, seq_len)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run must match: the seed and the fingerprint of the ordered shard list
        (the position itself is the step, which the checkpoint holds)."""
        return {"seed": self.seed, "order": self.order, "fingerprint": self.fingerprint,
                "num_shards": len(self.files), "total_tokens": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check a :meth:`state_dict` against this loader; raises :class:`LoaderError` if the seed or
        shards differ."""
        if state["seed"] != self.seed:
            raise LoaderError(f"loader state has seed {state['seed']}, this loader has seed {self.seed}")
        if state.get("order", "per_step") != self.order:
            raise LoaderError(f"loader state has token order {state.get('order', 'per_step')!r}, this loader has "
                              f"{self.order!r} (data.token_order); resume with the order the run started with")
        if state["fingerprint"] != self.fingerprint:
            raise LoaderError(
                f"loader state is for a different shard list ({state['num_shards']} shards, "
                f"{state['total_tokens']} tokens, fingerprint {state['fingerprint'][:12]}) than this loader's "
                f"({len(self.files)} shards, {self.total} tokens, fingerprint {self.fingerprint[:12]})")
