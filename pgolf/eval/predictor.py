"""The predictor protocol: what the engine asks of anything that scores validation tokens.

The engine (:mod:`pgolf.eval.engine`) owns scoring. For every step it builds a
:class:`ChunkBatch` (rows of context tokens, and which of their positions are scored), and:

1. calls ``predictor.log_probs(batch)``, which must return the log-probabilities of the **whole
   vocabulary** at the scored positions, a float tensor ``[n, V]`` (``n = batch.num_scored``,
   rows in the order of ``batch.positions``), finite, each row normalised
   (``logsumexp = 0``). The predictor sees only ``batch``: the context tokens of each row, never
   the targets as targets (a row's inputs hold the earlier targets of its chunk, as any causal
   context does; predicting position ``i`` from anything at ``>= i`` is what the audit catches);
2. gathers ``-log p(target)`` itself and adds it, with the target's bytes, to the float64
   accumulator: a predictor never sees the accumulator;
3. only then calls ``predictor.update(scored)`` with a :class:`ScoredBatch` (the batch, its
   targets and their NLL; the NLL keeps the autograd graph of ``log_probs``' output when that
   had one, so test-time training can back-propagate the very loss that was scored).

``log_probs`` must be a function of the predictor's state and the batch only: calling it twice
without an ``update`` in between gives the same answer (the audit checks this). A predictor with
``stateless = True`` promises that ``update`` changes nothing; the engine may then score several
chunks that share a context in one row (one forward for a document prefix instead of one per
chunk). Adaptive predictors (LoRA test-time training, a neural cache) set ``stateless = False``
and get one chunk per row, each document's chunks in order, ``update`` between them.

:class:`PlainModel` is the first predictor: the trained model, unchanged by what it scores.

Optional: a predictor with a method ``finish(*, out_of_time: bool)`` is told when the engine stops
using it on a rank (:func:`finish_predictor`): after the rank's last step, or when the eval time budget
ran out and the plain model scores the rest (``out_of_time``). One that takes part in collectives
across ranks (LoRA TTT's phases) joins or calls off there the ones it still owes, so no rank waits
for a rank that stopped using it. A predictor that wraps another passes the call on.

Optional: a predictor that can also give the final hidden states (before the output head) it
scored with implements :class:`HiddenStates`; a neural cache (:mod:`pgolf.eval.cache`) wraps any
such predictor, e.g. the plain model or a test-time-trained one (its hidden states then come from
the adapted model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from pgolf.model.gpt import GPT
from pgolf.util.device import autocast_for


@dataclass(frozen=True)
class ChunkBatch:
    """One step's rows. Row ``b`` holds the context ``inputs[b, :lengths[b]]`` (stream positions
    ``context_start[b] ...``), right-padded with token 0 to ``L`` columns; the padding is never
    scored. The scored positions, flattened row by row:

    - ``rows[i], cols[i]``: the input position whose next-token distribution is scored;
    - ``positions[i]``: the stream position of its target (``context_start[rows[i]] + cols[i] + 1``);
    - ``seqs[i]``: the sequence number of its chunk (the chunk's index in engine order).
    """

    inputs: torch.Tensor  # [B, L] int64
    lengths: torch.Tensor  # [B] int64
    context_start: torch.Tensor  # [B] int64
    lanes: torch.Tensor  # [B] int64: document (or stream) of each row
    rows: torch.Tensor  # [n] int64
    cols: torch.Tensor  # [n] int64
    positions: torch.Tensor  # [n] int64
    seqs: torch.Tensor  # [n] int64

    @property
    def num_scored(self) -> int:
        return int(self.positions.numel())


@dataclass(frozen=True)
class ScoredBatch:
    """A batch after scoring: its ``targets`` (``[n]`` token ids) and their ``nll`` (``[n]`` nats)."""

    batch: ChunkBatch
    targets: torch.Tensor
    nll: torch.Tensor


@runtime_checkable
class Predictor(Protocol):
    """What the engine calls (module docstring)."""

    stateless: bool

    def log_probs(self, batch: ChunkBatch) -> torch.Tensor:
        """Full-vocabulary log-probabilities ``[batch.num_scored, V]`` at the scored positions."""
        ...

    def update(self, scored: ScoredBatch) -> None:
        """Adapt on a chunk that has been scored (a no-op for stateless predictors)."""
        ...


@runtime_checkable
class HiddenStates(Protocol):
    """A predictor that also returns the hidden states its log-probabilities came from."""

    def log_probs_and_hidden(self, batch: ChunkBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_probs [n, V], hidden [n, D])`` at the scored positions, from one forward; the
        log-probabilities are exactly those :meth:`Predictor.log_probs` returns."""
        ...


def finish_predictor(predictor: object, *, out_of_time: bool) -> None:
    """Call ``predictor.finish(out_of_time=...)`` if it has one (module docstring)."""
    finish = getattr(predictor, "finish", None)
    if finish is not None:
        finish(out_of_time=out_of_time)


class PlainModel:
    """The model as trained: ``log_softmax`` of its logits, in inference mode, nothing adapted.

    The output head runs only on the scored positions' hidden states.
    """

    stateless = True

    def __init__(self, model: GPT, device: torch.device):
        self.model, self.device = model, device

    def log_probs(self, batch: ChunkBatch) -> torch.Tensor:
        return self.log_probs_and_hidden(batch)[0]

    def log_probs_and_hidden(self, batch: ChunkBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), autocast_for(self.device):
            h = self.model.hidden_states(batch.inputs)[batch.rows, batch.cols]  # [n, D]
            return self.model.logits_from_hidden(h).float().log_softmax(-1), h

    def update(self, scored: ScoredBatch) -> None:
        pass
