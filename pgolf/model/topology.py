"""The order in which the physical layers run: flat, or with a looped range (depth recurrence).

Flat: ``0 .. L-1``. Looped (``num_loops = n``, range ``s..e`` inclusive; RECORD_STACK B.5): the
range runs ``1 + n`` times, ``0..s-1, (s..e) x (1+n), e+1..L-1``; the record's 11 layers with
``n = 2, s = 3, e = 5`` give 17 virtual layers. The first ``len // 2`` virtual layers are the
encoder (their outputs feed the U-Net skips), the rest the decoder.
"""
from __future__ import annotations

from pgolf.config import ModelConfig


def layer_order(cfg: ModelConfig, *, looped: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(encoder, decoder)`` physical layer indices, looped when ``looped`` and ``cfg.num_loops > 0``."""
    order = list(range(cfg.num_layers))
    if looped and cfg.num_loops:
        loop = list(range(cfg.loop_start, cfg.loop_end + 1))
        order = order[: cfg.loop_start] + loop * (cfg.num_loops + 1) + order[cfg.loop_end + 1:]
    n_enc = len(order) // 2
    return tuple(order[:n_enc]), tuple(order[n_enc:])
