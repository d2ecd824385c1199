"""Argument checks shared by the subcommands: numbers in range, output paths that are not folders."""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any


def at_least(kind: type, low: float) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (``int`` or ``float``) >= ``low`` (argparse names the flag)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"must be a {'whole' if kind is int else 'finite'} number >= {low}, "
                                             f"got {text!r}")
        return value
    return parse


def refuse_folder(flag: str, path: str | None) -> None:
    """Refuse an output ``path`` that is a folder before any work, not when the result is written."""
    if path and os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a file name to write")
