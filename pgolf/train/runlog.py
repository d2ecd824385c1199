"""What a run tells people: official-style log lines, a JSONL metrics file and a loss-curve PNG.
Only rank 0 writes; other ranks get a silent logger."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RunLog:
    """Prints lines (rank 0) and appends them to ``run_dir/train.log``; metrics go to
    ``run_dir/metrics.jsonl`` as one JSON object per event. A last metrics line torn by a kill
    (no newline at the end) is cut off when the log is opened again, with a note in ``train.log``."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, echo: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled, self.echo = enabled, echo
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "train.log"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if enabled:
            self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        if not self.metrics_path.is_file():
            return
        data = self.metrics_path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        with open(self.metrics_path, "r+b") as f:
            f.truncate(keep)
        self.line(f"metrics: cut a torn last line ({len(data) - keep} bytes) from {self.metrics_path}", echo=False)

    def line(self, msg: str, *, echo: bool | None = None) -> None:
        """Print ``msg`` (when echoing; ``echo`` overrides the logger's setting) and append it to
        ``train.log``."""
        if not self.enabled:
            return
        if self.echo if echo is None else echo:
            print(msg, flush=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(msg + "\n")

    def metric(self, event: str, **values: Any) -> None:
        """Append ``{"event": event, "time": now, **values}`` to ``metrics.jsonl``."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "time": time.time(), **values}) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every event of a ``metrics.jsonl`` (none when the file is absent)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, *, title: str = "") -> Path | None:
    """Draw train loss (nats) and validation bpb against step into ``png_path``.

    Returns the path, or None when matplotlib is missing or there is nothing to draw.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in rows if r["event"] == "train"]
    val = [(r["step"], r["val_bpb"], r.get("full", True)) for r in rows if r["event"] == "val"]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss (nats/token)", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    if val:
        ax2 = ax.twinx()
        partial = [(s, b) for s, b, full in val if not full]
        full = [(s, b) for s, b, full in val if full]
        if partial:
            ax2.plot(*zip(*partial), "o--", label="val bpb (periodic, capped subset)", color="tab:orange")
        if full:
            ax2.plot(*zip(*full), "s", markersize=8, label="val bpb (full split)", color="tab:red")
        ax2.set_ylabel("val bpb (bits/byte)")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "pgolf training")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
