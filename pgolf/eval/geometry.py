"""Scoring geometries: which targets each chunk scores, and which context predicts them.

For a validation stream ``t_0 .. t_M`` the targets are the positions ``1 .. M``. A geometry turns
the stream into a :class:`Plan` of chunks; chunk ``k`` scores the targets ``t[start_k : stop_k]``
from the context ``t[ctx_k : stop_k - 1]`` (the prediction of ``t_i`` sees ``t[ctx_k : i]``), and
belongs to ``lane_k`` (a document, or the one stream). Every target is in exactly one chunk.

- :class:`Flat` (``T``): non-overlapping windows ``[kT, (k+1)T)`` of inputs; window ``k`` scores
  all of its targets, the last window may be shorter. Today's (and the official) validation.
- :class:`Sliding` (``W``, ``S``): windows of inputs ``[kS, min(kS + W, M))`` for ``k = 0, 1, ..``
  up to the first that reaches the stream's end; the first window scores all its targets, every
  later one only those past the previous window (its last ``S``; the last window what is left,
  which may be fewer). ``S = W`` is :class:`Flat`.
- :class:`Doc` (``C``, ``W``): documents start at each BOS; document ``d`` spans ``[b_d, b_{d+1}]``
  (the next BOS is its last target, so every target is predicted once). Its ``P = b_{d+1} - b_d``
  predictions are cut into chunks ``[jC, e_j)``, ``e_j = min((j+1)C, P)``, each predicted from the
  document's own tokens ``[max(0, e_j - W), e_j)``: context never crosses a document boundary.
  Tokens before the first BOS (a stream that does not start with one) form a document of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pgolf.config import EVAL_MODES


class GeometryError(ValueError):
    """A geometry's parameters, or the stream it is given, cannot be scored; the message says why."""


@dataclass(frozen=True)
class Plan:
    """The chunks of a geometry in stream order (int64 arrays of equal length).

    ``pad``: rows of different lengths may share a forward (right padding, never scored).
    """

    name: str
    start: np.ndarray
    stop: np.ndarray
    ctx: np.ndarray
    lane: np.ndarray
    pad: bool

    def __len__(self) -> int:
        return len(self.start)

    @property
    def num_targets(self) -> int:
        return int((self.stop - self.start).sum())


def _positive(**values: int) -> None:
    for key, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise GeometryError(f"{key} must be a positive integer, got {v!r}")


def _num_targets(tokens: Any) -> int:
    return max(len(tokens) - 1, 0)


@dataclass(frozen=True)
class Flat:
    """Non-overlapping windows of ``window`` inputs (the module docstring)."""

    window: int
    name: str = "flat"

    def __post_init__(self) -> None:
        _positive(**{"eval.window": self.window})

    def plan(self, tokens: Any) -> Plan:
        m, t = _num_targets(tokens), self.window
        k = np.arange(-(-m // t), dtype=np.int64)
        return Plan(self.name, start=k * t + 1, stop=np.minimum((k + 1) * t, m) + 1, ctx=k * t,
                    lane=np.zeros_like(k), pad=False)


@dataclass(frozen=True)
class Sliding:
    """Window ``window``, stride ``stride``: later windows score only their last ``stride`` targets."""

    window: int
    stride: int
    name: str = "sliding"

    def __post_init__(self) -> None:
        _positive(**{"eval.window": self.window, "eval.stride": self.stride})
        if self.stride > self.window:
            raise GeometryError(f"eval.stride={self.stride} must not exceed eval.window={self.window}: "
                                f"the targets between two windows would never be scored")

    def plan(self, tokens: Any) -> Plan:
        m, w, s = _num_targets(tokens), self.window, self.stride
        last = max(0, -(-(m - w) // s))  # the first window that reaches the stream's end
        ctx = np.arange(last + 1, dtype=np.int64) * s if m else np.zeros(0, np.int64)
        ends = np.minimum(ctx + w, m)
        starts = np.concatenate([[0], ends[:-1]]) + 1 if m else ctx
        return Plan(self.name, start=starts, stop=ends + 1, ctx=ctx, lane=np.zeros_like(ctx), pad=False)


def document_starts(tokens: Any, bos_id: int) -> np.ndarray:
    """Start positions of the documents of ``tokens``: every BOS, and 0 when it is not one."""
    toks = np.asarray(tokens)
    starts = np.flatnonzero(toks == bos_id).astype(np.int64)
    if len(starts) == 0:
        raise GeometryError(f"eval mode doc needs documents that start with BOS (id {bos_id}), but the "
                            f"validation stream of {len(toks)} tokens holds none; use eval.mode=flat or "
                            f"sliding, or set eval.bos_id")
    if starts[0] != 0:
        starts = np.concatenate([[0], starts])
    return starts


@dataclass(frozen=True)
class Doc:
    """Document-aware chunks of ``chunk`` targets with up to ``window`` tokens of the document's prefix."""

    chunk: int
    window: int
    bos_id: int = 1
    name: str = "doc"

    def __post_init__(self) -> None:
        _positive(**{"eval.chunk": self.chunk, "eval.window": self.window})
        if self.chunk > self.window:
            raise GeometryError(f"eval.chunk={self.chunk} must not exceed eval.window={self.window}: a chunk's "
                                f"first targets would have no context inside the window")

    def plan(self, tokens: Any) -> Plan:
        m = _num_targets(tokens)
        if m == 0:
            return Flat(self.window, self.name).plan(tokens)
        begin = document_starts(tokens, self.bos_id)
        preds = np.diff(np.concatenate([begin, [m]]))  # P_d: the last document ends at the stream's end
        keep = preds > 0  # a BOS that is the stream's last token starts an empty document
        begin, preds = begin[keep], preds[keep]
        n_chunks = -(-preds // self.chunk)
        doc = np.repeat(np.arange(len(begin), dtype=np.int64), n_chunks)
        j = np.arange(len(doc), dtype=np.int64) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
        end = np.minimum((j + 1) * self.chunk, preds[doc])
        b = begin[doc]
        return Plan(self.name, start=b + j * self.chunk + 1, stop=b + end + 1,
                    ctx=b + np.maximum(end - self.window, 0), lane=doc, pad=True)


Geometry = Flat | Sliding | Doc


def make_geometry(mode: str, *, window: int, stride: int, chunk: int, bos_id: int = 1) -> Geometry:
    """The geometry named ``mode`` (``flat``, ``sliding`` or ``doc``) with its parameters checked."""
    if mode == "flat":
        return Flat(window)
    if mode == "sliding":
        return Sliding(window, stride)
    if mode == "doc":
        return Doc(chunk, window, bos_id)
    raise GeometryError(f"unknown eval mode {mode!r}; modes: {', '.join(EVAL_MODES)}")
