"""Learning-rate and momentum schedules of the official script and of the record.

Every group's lr is ``base_lr * lr_multiplier(...)``: 1 until the warmdown, then linear to 0 over
the last ``warmdown_iters`` steps -- or, with a wallclock cap, over the last
``warmdown_iters * (mean step time)`` seconds before the cap (the official rule). With
``warmdown_frac > 0`` (the record, RECORD_STACK B.11) it follows the training fraction instead:
``s = 1`` for ``frac < 1 - warmdown_frac``, else ``(1 - frac) / warmdown_frac``. Either way the
multiplier never goes below ``min_lr``.
"""
from __future__ import annotations

from pgolf.config import OptimConfig


def lr_multiplier(step: int, elapsed_s: float, *, iterations: int, warmdown_iters: int,
                  max_wallclock_seconds: float, warmdown_frac: float = 0.0, min_lr: float = 0.0) -> float:
    """Learning-rate multiplier at ``step`` after ``elapsed_s`` seconds of training (module docstring)."""
    if warmdown_frac > 0:
        frac = training_fraction(step, elapsed_s, iterations=iterations, max_wallclock_seconds=max_wallclock_seconds)
        mul = 1.0 if frac < 1.0 - warmdown_frac else (1.0 - frac) / warmdown_frac
    else:
        mul = _official_multiplier(step, elapsed_s, iterations=iterations, warmdown_iters=warmdown_iters,
                                   max_wallclock_seconds=max_wallclock_seconds)
    return max(mul, min_lr)


def training_fraction(step: int, elapsed_s: float, *, iterations: int, max_wallclock_seconds: float) -> float:
    """How far training is: ``elapsed_s / max_wallclock_seconds`` under a cap, else ``step / iterations``."""
    if max_wallclock_seconds > 0:
        return elapsed_s / max_wallclock_seconds
    return step / iterations


def _official_multiplier(step: int, elapsed_s: float, *, iterations: int, warmdown_iters: int,
                         max_wallclock_seconds: float) -> float:
    """The official multiplier. Without a cap: ``(iterations - step) / warmdown_iters`` inside the last ``warmdown_iters``
    steps. With a cap ``C``: with ``w = warmdown_iters * elapsed_s / step`` the projected warmdown
    duration, the multiplier is ``max(C - elapsed_s, 0) / w`` once that is below 1.
    """
    if warmdown_iters <= 0:
        return 1.0
    if max_wallclock_seconds <= 0:
        if max(iterations - warmdown_iters, 0) <= step < iterations:
            return max((iterations - step) / warmdown_iters, 0.0)
        return 1.0
    warmdown_s = warmdown_iters * elapsed_s / max(step, 1)
    remaining_s = max(max_wallclock_seconds - elapsed_s, 0.0)
    return remaining_s / max(warmdown_s, 1e-9) if remaining_s <= warmdown_s else 1.0


def muon_momentum(step: int, ocfg: OptimConfig) -> float:
    """Linear warmup of Muon's momentum over ``muon_momentum_warmup_steps``."""
    frac = min(step / ocfg.muon_momentum_warmup_steps, 1.0) if ocfg.muon_momentum_warmup_steps > 0 else 1.0
    return (1 - frac) * ocfg.muon_momentum_warmup_start + frac * ocfg.muon_momentum
