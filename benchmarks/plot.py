"""Speedup charts and Markdown tables from recorded results (``benchmarks/results/<bench>.jsonl``).

``python -m benchmarks.plot [--results DIR] [--markdown]`` draws ``<bench>.png`` beside each
results file from its latest run, and with ``--markdown`` prints that run as a Markdown table
(for the README) that names the machine which produced it.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from benchmarks.harness import (ERROR, FAILING, OK, SUMMARY_HEADER, format_speedup, latest_run,
                                read_results, summary_cells)
from benchmarks.provenance import describe

RESULTS = Path(__file__).resolve().parent / "results"
_MARKS = {FAILING: ("FAIL", "tab:red"), ERROR: ("ERROR", "tab:red"), OK: ("no baseline", "tab:gray")}


def plot_benchmark(rows: list[dict], path: Path | str) -> Path:
    """Draw the latest run in ``rows`` as grouped bars of speedup vs the baseline; save a PNG.

    One group per case, one bar per contender; a contender that failed, was unavailable or was
    skipped gets no bar but a labelled marker at the axis, so it is visibly not a speedup of 0.
    """
    from matplotlib.figure import Figure

    rows = latest_run(rows)
    if not rows:
        raise ValueError("no rows to plot")
    cases = list(dict.fromkeys(r["case"] for r in rows))
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    by_key = {(r["case"], r["contender"]): r for r in rows}
    width = 0.8 / len(contenders)
    fig = Figure(figsize=(max(6.0, 1.2 * len(cases) * len(contenders) ** 0.5 + 2), 4.5))
    ax = fig.subplots()
    for j, name in enumerate(contenders):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(cases))]
        heights = []
        for x, case in zip(xs, cases):
            row = by_key.get((case, name))
            ok = row is not None and row["status"] == OK and row["speedup"] is not None
            heights.append(row["speedup"] if ok else 0.0)
            if ok:
                ax.annotate(format_speedup(row["speedup"]), (x, row["speedup"]), ha="center",
                            va="bottom", fontsize=7)
            else:
                status = row["status"] if row else "absent"
                text, color = _MARKS.get(status, (status, "tab:gray"))
                ax.annotate(text, (x, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", rotation=90, fontsize=7, color=color)
        ax.bar(xs, heights, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(cases)), cases, rotation=20, ha="right", fontsize=8)
    first = rows[0]
    ax.set_ylabel(f"speedup vs {first['baseline']} (higher is faster)")
    note = "" if first["provenance"]["device"] == "cuda" else ", CPU smoke test: not a speed claim"
    ax.set_title(f"{first['bench']} ({first['size']}{note})\n"
                 + textwrap.fill(describe(first["provenance"]), 100), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def markdown_table(rows: list[dict]) -> str:
    """The latest run in ``rows`` as Markdown: a line naming the machine and peaks, then a table."""
    rows = latest_run(rows)
    if not rows:
        raise ValueError("no rows to render")
    first, peaks = rows[0], rows[0]["peaks"]
    lines = [f"**{first['bench']}** ({first['size']}), measured on {describe(first['provenance'])}. "
             f"Measured peaks: {peaks['flops_per_s'] / 1e12:.3g} TFLOP/s, "
             f"{peaks['bytes_per_s'] / 1e9:.4g} GB/s, launch {peaks['launch_s'] * 1e6:.3g} us "
             f"({peaks['method']}). Speedup is against `{first['baseline']}` in the same run."]
    if first["provenance"]["device"] != "cuda":
        lines.append("")
        lines.append("_CPU smoke-test numbers: they show the harness works, they are not speed claims._")
    lines += ["", "| " + " | ".join(SUMMARY_HEADER[1:]) + " |",
              "|" + "---|" * (len(SUMMARY_HEADER) - 1)]
    lines += ["| " + " | ".join(summary_cells(r)[1:]) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Draw a chart for every results file; with ``--markdown`` also print its table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of <bench>.jsonl files")
    parser.add_argument("--markdown", action="store_true", help="print each latest run as Markdown")
    args = parser.parse_args(argv)
    files = sorted(args.results.glob("*.jsonl"))
    if not files:
        print(f"no results files (*.jsonl) in {args.results}")
        return 1
    for path in files:
        rows = read_results(path)
        print(f"wrote {plot_benchmark(rows, path.with_suffix('.png'))}")
        if args.markdown:
            print("\n" + markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
