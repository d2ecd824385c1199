"""Run every benchmark: ``python -m benchmarks.run [--size tiny|full] [--only NAME] [--out DIR]``.

Discovers each ``bench_*.py`` module's ``BENCHMARK``, measures this machine's peaks once, runs
every benchmark through the harness (on ``full``, within a shared time budget), appends the rows to
``<out>/<bench>.jsonl`` (+ CSV, + PNG chart) and prints a summary table last.

On a machine without CUDA the default size is ``tiny`` and Triton runs under ``TRITON_INTERPRET=1``:
a smoke test of the harness and the kernels, not a speed claim. ``--size full`` needs a GPU.
Exit status: 0 when every contender that ran was correct, 1 when any failed its check or a
benchmark could not run, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.harness import (ERROR, FAILURES, SUMMARY_HEADER, Benchmark, Row, as_dicts,
                                measure_peaks, new_run_id, read_results, run_benchmark,
                                summary_cells, write_results)
from benchmarks.plot import plot_benchmark
from benchmarks.provenance import collect_provenance, describe

HERE = Path(__file__).resolve().parent
FULL_BUDGET_S = 540.0  # all benchmarks of a full run share this, so the run ends in < 10 minutes
CPU_NOTE = ("NOTE: CPU run (Triton interpreter): these numbers show the harness works; "
            "they are not speed claims.")


def discover(directory: Path | str | None = None) -> tuple[list[Benchmark], list[tuple[str, str]]]:
    """Import every ``bench_*.py`` in ``directory`` (default: this package) and take its BENCHMARK.

    Returns the benchmarks, sorted by module name, and ``(module, error)`` for each module that
    failed to import or defines no ``BENCHMARK``.
    """
    directory = Path(directory) if directory is not None else HERE
    found, errors = [], []
    for path in sorted(directory.glob("bench_*.py")):
        try:
            module = _import(path, package=directory.resolve() == HERE)
            bench = getattr(module, "BENCHMARK", None)
            if not isinstance(bench, Benchmark):
                raise TypeError(f"{path.name} defines no BENCHMARK = Benchmark(...)")
            found.append(bench)
        except Exception:
            errors.append((path.stem, traceback.format_exc(limit=-1).strip().splitlines()[-1]))
    return found, errors


def _import(path: Path, *, package: bool):
    if package:  # a module of this package: import it as such, so relative imports work
        return importlib.import_module(f"{__package__}.{path.stem}")
    spec = importlib.util.spec_from_file_location(f"_pgolf_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def format_table(rows: list[dict], message_width: int = 60) -> str:
    """The rows as an aligned plain-text table with :data:`SUMMARY_HEADER` columns."""
    table = [list(SUMMARY_HEADER)] + [summary_cells(r, message_width) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(SUMMARY_HEADER) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]
                     for line in table)


def share_of_budget(total_s: float, spent_s: float, benchmarks_left: int) -> float:
    """Seconds for the next benchmark: what is left of ``total_s``, shared by those still to run
    (a benchmark that finishes early leaves its time to the ones after it); at least 1 s, so a
    late benchmark still checks its contenders and reports the rest ``skipped``."""
    return max(1.0, (total_s - spent_s) / benchmarks_left)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.run``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), help="default: full on CUDA, tiny otherwise")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this benchmark (name or module, repeatable)")
    parser.add_argument("--skip", action="append", metavar="NAME", default=[],
                        help="leave this benchmark out (name or module, repeatable)")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results, "
                        "and benchmarks/results/tiny for tiny runs, which git ignores)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--budget-s", type=float, help="time budget per benchmark in seconds "
                        f"(default on full: {FULL_BUDGET_S:g} s shared, what one leaves going to the "
                        "next; none on tiny)")
    parser.add_argument("--total-s", type=float, help="one time budget shared by all benchmarks, in seconds "
                        f"(replaces the {FULL_BUDGET_S:g} s of a full run; what one leaves goes to the next)")
    parser.add_argument("--bench-dir", type=Path, help="folder of bench_*.py modules (default: here)")
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.total_s is not None:
        parser.error("--budget-s (per benchmark) and --total-s (shared) exclude each other")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    size = args.size or ("full" if device.type == "cuda" else "tiny")
    if size == "full" and device.type != "cuda":
        print("error: --size full needs a CUDA GPU; full-size numbers from a CPU would mean nothing. "
              "Use --size tiny for a smoke test.", file=sys.stderr)
        return 2
    if device.type != "cuda":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any bench module imports triton
    out = args.out or (HERE / "results" / ("tiny" if size == "tiny" else ""))

    benches, errors = discover(args.bench_dir)
    if not benches and not errors:
        print(f"error: no bench_*.py modules in {args.bench_dir or HERE}", file=sys.stderr)
        return 2
    known = {b.name for b in benches} | {e[0].removeprefix("bench_") for e in errors}
    unknown = [n for n in args.skip if n.removeprefix("bench_") not in known]
    if unknown:
        print(f"error: --skip {', '.join(unknown)}: no such benchmark (there are {', '.join(sorted(known))})",
              file=sys.stderr)
        return 2
    skip = {n.removeprefix("bench_") for n in args.skip}
    benches = [b for b in benches if b.name not in skip]
    errors = [e for e in errors if e[0].removeprefix("bench_") not in skip]
    if args.only:
        benches = [b for b in benches if b.name in args.only or f"bench_{b.name}" in args.only]
        errors = [e for e in errors if e[0] in args.only or e[0].removeprefix("bench_") in args.only]
        if not benches and not errors:
            print(f"error: no benchmark named {args.only}", file=sys.stderr)
            return 2

    provenance = collect_provenance(device)
    run_id = new_run_id(provenance)
    interpreted = provenance["triton_interpret"]
    print(f"# {describe(provenance)}", file=sys.stderr)
    if interpreted:
        print(CPU_NOTE if device.type != "cuda" else
              "WARNING: TRITON_INTERPRET is on: Triton kernels run in the interpreter; "
              "these numbers are not speed claims.", file=sys.stderr)
    peaks = measure_peaks(device)
    print(f"# peaks: {peaks.flops_per_s / 1e12:.3g} TFLOP/s, {peaks.bytes_per_s / 1e9:.4g} GB/s, "
          f"launch {peaks.launch_s * 1e6:.3g} us ({peaks.method})", file=sys.stderr)
    shared_budget = args.total_s is not None or (args.budget_s is None and size == "full")
    total_s = FULL_BUDGET_S if args.total_s is None else args.total_s
    run_start = time.monotonic()

    all_rows = []
    for module, error in errors:
        print(f"[{module}] ERROR {error}", file=sys.stderr)
        row = Row(run_id=run_id, bench=module.removeprefix("bench_"), size=size, case="-",
                  contender="-", baseline="-", device=str(device), status=ERROR,
                  message=f"import failed: {error}", peaks=asdict(peaks), provenance=provenance)
        all_rows += _record([row], out)
    for i, bench in enumerate(benches):
        start = time.monotonic()
        budget = args.budget_s
        if shared_budget:
            budget = share_of_budget(total_s, start - run_start, len(benches) - i)
        print(f"[{bench.name}] {size} on {device}" + (f", budget {budget:g} s" if budget else ""),
              file=sys.stderr)
        rows = run_benchmark(bench, size=size, device=device, peaks=peaks, budget_s=budget,
                             provenance=provenance, run_id=run_id,
                             log=lambda line, n=bench.name: print(f"[{n}] {line}", file=sys.stderr))
        all_rows += _record(rows, out)
        print(f"[{bench.name}] done in {time.monotonic() - start:.1f} s", file=sys.stderr)

    print(f"results in {out}")
    if interpreted:
        print(CPU_NOTE if device.type != "cuda" else "WARNING: Triton interpreter on: not speed claims.")
    print(format_table(all_rows))
    failed = [r for r in all_rows if r["status"] in FAILURES]
    if failed:
        print(f"{len(failed)} row(s) FAILING or ERROR", file=sys.stderr)
    return 1 if failed else 0


def _record(rows: list[Row], out: Path) -> list[dict]:
    """Append rows to the results files and draw the benchmark's chart (when matplotlib exists)."""
    dicts = as_dicts(rows)
    for path in write_results(dicts, out):
        if importlib.util.find_spec("matplotlib") is None:
            print("matplotlib is not installed: no chart drawn", file=sys.stderr)
        else:
            plot_benchmark(read_results(path), path.with_suffix(".png"))
    return dicts


if __name__ == "__main__":
    raise SystemExit(main())
