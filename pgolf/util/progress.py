"""A progress bar that appears only for a person watching: an interactive stderr, not CI."""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

from tqdm import tqdm


def interactive() -> bool:
    """True when stderr is a terminal and ``CI`` is not set to a true value."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return sys.stderr.isatty() and not ci


def progress(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str | None = None,
             unit: str = "it", enabled: bool = True) -> tqdm:
    """A :class:`tqdm` over ``iterable`` (or a manual one, via ``update``) that draws nothing
    unless ``enabled`` and :func:`interactive`; disabled, it is a plain pass-through."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not (enabled and interactive()),
                file=sys.stderr, unit_scale=True, dynamic_ncols=True)
