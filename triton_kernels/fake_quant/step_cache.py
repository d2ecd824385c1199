"""``fq(W)`` once per optimiser step: the quantised weight kept until the weight changes.

Gradient accumulation runs ``k`` forwards on the same weights between two optimiser steps; the row
scales (``percentile``: a per-row ``torch.quantile``, i.e. a sort) and ``fq(W)`` come out the same each
time. :class:`StepCache` keeps the last result per weight and returns it while the weight's
*version counter* is unchanged: every in-place write to a tensor (an optimiser step, ``copy_``,
``load_state_dict``, ``fill_`` of the QAT switch) bumps the counter of the tensor and of every view
of it, so the first forward after a step recomputes and the next ``k - 1`` reuse. A hit returns the
very tensors of the first forward, so the result is bit-identical to recomputing.

The cache holds a reference to the weight it was computed from, so its memory cannot be reused by
another tensor that would then match the key. It never hands out a tensor that anyone writes into:
the caller only caches where autograd keeps the result for the backward pass (see the callers).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch


class StepCache:
    """At most ``capacity`` results, the least recently used dropped first."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    def get(self, tensors: tuple[torch.Tensor | None, ...], settings: tuple,
            compute: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """``compute()``, or its result from the last call with the same ``settings`` on the same
        ``tensors`` (same memory, layout and version counters)."""
        key = settings + tuple(None if t is None else (t.data_ptr(), t.device, t.dtype, tuple(t.shape), t.stride())
                               for t in tensors)
        stamp = tuple(None if t is None else t._version for t in tensors)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == stamp:
            self._entries.move_to_end(key)
            return hit[2]
        result = compute()
        self._entries[key] = (stamp, tensors, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return result


STEP_CACHE = StepCache()
