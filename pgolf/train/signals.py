"""SIGTERM/SIGINT as a flag the training loop reads at step boundaries."""
from __future__ import annotations

import signal
from typing import Any


class SignalFlag:
    """Records SIGTERM/SIGINT (in ``signum``) so the loop can checkpoint at the next step boundary;
    the previous handlers come back on exit. Outside the main thread it leaves signals alone."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        try:
            for s in (signal.SIGTERM, signal.SIGINT):
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
