"""The one benchmark harness: check every contender against the oracle, then time the ones that pass.

A benchmark module (``benchmarks/bench_<family>.py``) defines ``BENCHMARK = Benchmark(...)``: cases
(shapes + how to make inputs + the op's useful FLOPs and compulsory bytes), contenders, a reference
oracle, a check and the name of the baseline contender. :func:`run_benchmark` turns it into one
:class:`Row` per (case, contender):

1. an unavailable contender is skipped with its reason;
2. every other contender runs once on the first input set and its output goes through the check;
   a wrong output or an exception makes the row ``FAILING`` and the contender is never timed;
3. a passing contender is warmed up, then timed over several input sets made up front (rotated so
   caches do not flatter it), with CUDA events and an L2 flush between reps on a GPU and
   ``time.perf_counter`` on a CPU; the row holds the median and the p20/p80 spread;
4. the row gets the speedup against the baseline timed in the same run, achieved TFLOP/s and GB/s,
   the percent of the op's floor reached (from the peaks measured on this machine in this run),
   the contender's peak extra device memory, and the run's provenance.
"""
from __future__ import annotations

import csv
import json
import math
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.provenance import collect_provenance

OK, FAILING, ERROR, UNAVAILABLE, SKIPPED = "ok", "FAILING", "ERROR", "unavailable", "skipped"
FAILURES = (FAILING, ERROR)
SIZES = ("tiny", "full")


@dataclass
class Case:
    """One shape of an op: how to make its inputs and how much work one call must do."""

    name: str  # e.g. "M65536_K512_N1024_bf16"
    make_inputs: Callable[[torch.device, int], tuple]  # (device, seed) -> positional inputs
    flops: float  # useful FLOPs of one call (0 if memory-bound only)
    bytes: float  # compulsory bytes of one call (read + write)
    max_sets: int | None = None  # at most this many rotated input sets (1 where building one takes minutes)


@dataclass
class Contender:
    """One implementation: ``fn(*inputs) -> output``; ``unavailable()`` gives a reason it cannot run."""

    name: str
    fn: Callable[..., Any]
    unavailable: Callable[[], str | None] = lambda: None


@dataclass
class Benchmark:
    """An op family: its cases per size (``"tiny"`` or ``"full"``), contenders, oracle and baseline."""

    name: str
    cases: Callable[[str], list[Case]]
    contenders: list[Contender]
    reference: Callable[..., Any]  # reference(*inputs) -> output
    check: Callable[[Any, Any], str | None]  # check(out, ref) -> None if ok, else a message
    baseline: str  # the contender name speedups are against


@dataclass(frozen=True)
class Peaks:
    """What this machine reaches, measured once per run; every op's floor is computed from it."""

    flops_per_s: float  # large matmul (bf16 on a GPU, fp32 on a CPU)
    bytes_per_s: float  # large device copy, read + write bytes
    launch_s: float  # median time of a one-element op: the cost of any call at all
    method: str  # how the three were measured, in words


@dataclass(frozen=True)
class Timing:
    """How long to warm up and time each contender, and how to keep caches from flattering it."""

    warmup_ms: float  # warm-up calls fill about this much time
    rep_ms: float  # timed calls fill about this much time, within [min_reps, max_reps]
    min_reps: int
    max_reps: int
    max_rotate: int  # at most this many input sets
    rotate_bytes: int  # input sets are added until together they hold this many bytes
    flush_bytes: int  # a buffer this large is written before every timed call (0: none)


@dataclass
class Row:
    """One (case, contender) result. Times in ms; ``None`` where a value does not apply."""

    run_id: str
    bench: str
    size: str
    case: str
    contender: str
    baseline: str
    device: str
    status: str  # ok | FAILING | ERROR | unavailable | skipped
    message: str = ""
    time_ms: float | None = None  # median over reps
    p20_ms: float | None = None
    p80_ms: float | None = None
    reps: int = 0
    rotate: int = 0  # input sets the reps cycled through
    speedup: float | None = None  # baseline median / this median, same run
    tflops: float | None = None
    gbps: float | None = None
    floor_ms: float | None = None  # max(flops / peak FLOP/s, bytes / peak B/s) + launch
    pct_floor: float | None = None  # 100 * floor / time: 100 means at the physical limit
    peak_mem_bytes: int | None = None  # peak extra device memory of one call (None: not measurable)
    flops: float = 0.0
    bytes: float = 0.0
    peaks: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)


def default_timing(device: torch.device) -> Timing:
    """Timing settings for ``device``: do_bench-like on a GPU, short smoke-test settings on a CPU."""
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20
        return Timing(warmup_ms=25, rep_ms=100, min_reps=10, max_reps=1000, max_rotate=16,
                      rotate_bytes=2 * l2, flush_bytes=max(4 * l2, 256 << 20))
    return Timing(warmup_ms=5, rep_ms=20, min_reps=3, max_reps=50, max_rotate=4,
                  rotate_bytes=32 << 20, flush_bytes=0)


def floor_seconds(flops: float, nbytes: float, peaks: Peaks) -> float:
    """The physical floor of one call: ``max(flops / peak FLOP/s, bytes / peak B/s) + launch``."""
    return max(flops / peaks.flops_per_s, nbytes / peaks.bytes_per_s) + peaks.launch_s


def time_calls(call: Callable[[int], Any], n: int, device: torch.device,
               flush: torch.Tensor | None = None) -> list[float]:
    """Seconds taken by each of ``call(0) .. call(n-1)``.

    On CUDA each call sits between two events (after writing ``flush``, when given, to evict L2);
    on a CPU each call is timed with ``time.perf_counter``.
    """
    if device.type != "cuda":
        times = []
        for i in range(n):
            start = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - start)
        return times
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        if flush is not None:
            flush.zero_()
        starts[i].record()
        call(i)
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def measure(fn: Callable[..., Any], sets: list[tuple], device: torch.device, timing: Timing,
            flush: torch.Tensor | None = None) -> list[float]:
    """Warm ``fn`` up, then return the seconds of each timed call, cycling through ``sets``."""
    call = lambda i: fn(*sets[i % len(sets)])  # noqa: E731
    estimate = float(np.median(time_calls(call, 3 if device.type == "cuda" else 1, device, flush)))
    estimate = max(estimate, 1e-7)
    n_warmup = min(timing.max_reps, max(1, math.ceil(timing.warmup_ms / 1e3 / estimate)))
    n_reps = min(timing.max_reps, max(timing.min_reps, math.ceil(timing.rep_ms / 1e3 / estimate)))
    for i in range(n_warmup):
        call(i)
    _sync(device)
    return time_calls(call, n_reps, device, flush)


def measure_peaks(device: torch.device | str, timing: Timing | None = None) -> Peaks:
    """Measure this machine's matmul FLOP/s, copy bandwidth and launch latency (medians).

    GPU: bf16 8192x8192x8192 matmul, a copy of up to 1 GiB; CPU (smoke-test scale): fp32 512^3
    matmul, a 32 MiB copy. The launch latency is a one-element ``zero_()`` timed exactly as
    contenders are (``timing``'s L2 flush included), so it is the least any timed call can take.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    timing = timing or default_timing(device)
    n, dtype = (8192, torch.bfloat16) if cuda else (512, torch.float32)
    copy_bytes = 32 << 20
    if cuda:
        copy_bytes = min(1 << 30, torch.cuda.mem_get_info(device)[0] // 8)
    steady = Timing(warmup_ms=200 if cuda else 10, rep_ms=200 if cuda else 50, min_reps=5,
                    max_reps=500, max_rotate=1, rotate_bytes=0, flush_bytes=0)
    with _on(device):
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
        b = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
        t_mm = float(np.median(measure(torch.matmul, [(a, b)], device, steady)))
        del a, b
        src = torch.zeros(copy_bytes // 4, dtype=torch.float32, device=device)
        dst = torch.zeros_like(src)
        t_copy = float(np.median(measure(lambda d, s: d.copy_(s), [(dst, src)], device, steady)))
        del src, dst
        flush = _flush_buffer(device, timing)
        one = torch.zeros(1, device=device)
        t_launch = float(np.median(measure(torch.Tensor.zero_, [(one,)], device, timing, flush)))
        del flush
    kind = "GPU" if cuda else "CPU"
    method = (f"{kind}: {str(dtype).removeprefix('torch.')} matmul {n}^3, "
              f"copy of {copy_bytes / 2**20:.0f} MiB (read+write), one-element zero_()")
    return Peaks(flops_per_s=2 * n**3 / t_mm, bytes_per_s=2 * copy_bytes / t_copy,
                 launch_s=t_launch, method=method)


def new_run_id(provenance: dict) -> str:
    """An id shared by every row of one run: its UTC date plus a random suffix."""
    return f"{provenance['date_utc']}-{uuid.uuid4().hex[:6]}"


def run_benchmark(bench: Benchmark, *, size: str, device: torch.device | str,
                  peaks: Peaks | None = None, timing: Timing | None = None,
                  rotate: int | None = None, budget_s: float | None = None,
                  provenance: dict | None = None, run_id: str | None = None,
                  log: Callable[[str], None] | None = None) -> list[Row]:
    """Check and time every contender of ``bench`` on its ``size`` cases; one :class:`Row` each.

    Args:
        size: ``"tiny"`` (CPU smoke test under the Triton interpreter) or ``"full"`` (GPU).
        device: where inputs are made and contenders run.
        peaks: this machine's measured peaks; measured here (:func:`measure_peaks`) when omitted.
        timing: warm-up/rep/rotation/flush settings; :func:`default_timing` when omitted.
        rotate: number of input sets to cycle through; by default enough to cover
            ``timing.rotate_bytes`` (about twice the cache), at most ``timing.max_rotate``, and on
            a GPU no more than a quarter of the free memory.
        budget_s: wall-clock budget; once spent, the remaining contenders are ``skipped``.
        provenance, run_id: shared by every row; collected/made here when omitted.
        log: receives one progress line per row.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    names = [c.name for c in bench.contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"{bench.name}: contender names repeat: {names}")
    if bench.baseline not in names:
        raise ValueError(f"{bench.name}: baseline {bench.baseline!r} is not a contender ({names})")
    device = torch.device(device)
    timing = timing or default_timing(device)
    peaks = peaks or measure_peaks(device, timing)
    provenance = provenance or collect_provenance(device)
    run = _Run(bench=bench, size=size, device=device, peaks=peaks, timing=timing, rotate=rotate,
               deadline=None if budget_s is None else time.monotonic() + budget_s,
               budget_s=budget_s, log=log or (lambda line: None))
    row = partial(Row, run_id=run_id or new_run_id(provenance), bench=bench.name, size=size,
                  baseline=bench.baseline, device=str(device), peaks=asdict(peaks),
                  provenance=provenance)
    rows: list[Row] = []
    with _on(device):
        run.flush = _flush_buffer(device, timing)
        for case in bench.cases(size):
            rows += run.run_case(case, partial(row, case=case.name, flops=case.flops, bytes=case.bytes))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


@dataclass
class _Run:
    """The settings of one :func:`run_benchmark` call, shared by its cases."""

    bench: Benchmark
    size: str
    device: torch.device
    peaks: Peaks
    timing: Timing
    rotate: int | None
    deadline: float | None
    budget_s: float | None
    log: Callable[[str], None]
    flush: torch.Tensor | None = None  # written before every timed call on CUDA to evict L2

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def run_case(self, case: Case, row: Callable[..., Row]) -> list[Row]:
        names = [c.name for c in self.bench.contenders]
        if self.out_of_time():
            rows = [row(contender=n, status=SKIPPED, message=self.spent()) for n in names]
        else:
            try:
                sets = self.input_sets(case)
                ref = self.bench.reference(*sets[0])
            except Exception as exc:  # a broken case fails every contender, none is timed
                rows = [row(contender=n, status=ERROR, message=f"case setup raised {_describe(exc)}")
                        for n in names]
            else:
                rows = [self.run_contender(c, case, sets, ref, row) for c in self.bench.contenders]
        base = next((r for r in rows if r.contender == self.bench.baseline and r.status == OK), None)
        for r in rows:
            if r.status == OK and base is not None:
                r.speedup = base.time_ms / r.time_ms
            self.log(_progress_line(r))
        return rows

    def run_contender(self, contender: Contender, case: Case, sets: list[tuple], ref: Any,
                      row: Callable[..., Row]) -> Row:
        row = partial(row, contender=contender.name)
        try:
            reason = contender.unavailable()
        except Exception as exc:
            return row(status=FAILING, message=f"unavailable() raised {_describe(exc)}")
        if reason:
            return row(status=UNAVAILABLE, message=reason)
        if self.out_of_time():
            return row(status=SKIPPED, message=self.spent())
        try:
            out = contender.fn(*sets[0])
            _sync(self.device)
            problem = self.bench.check(out, ref)
            del out
        except Exception as exc:
            return row(status=FAILING, message=f"raised {_describe(exc)}")
        if problem is not None:
            return row(status=FAILING, message=str(problem))
        try:
            times = measure(contender.fn, sets, self.device, self.timing, self.flush)
            peak_mem = _peak_memory(contender.fn, sets[0], self.device)
        except Exception as exc:
            return row(status=FAILING, message=f"raised while timed {_describe(exc)}")
        t = float(np.median(times))
        floor = floor_seconds(case.flops, case.bytes, self.peaks)
        return row(status=OK, time_ms=t * 1e3, p20_ms=float(np.percentile(times, 20)) * 1e3,
                   p80_ms=float(np.percentile(times, 80)) * 1e3, reps=len(times), rotate=len(sets),
                   tflops=case.flops / t / 1e12 if case.flops else None,
                   gbps=case.bytes / t / 1e9 if case.bytes else None,
                   floor_ms=floor * 1e3, pct_floor=100 * floor / t, peak_mem_bytes=peak_mem)

    def input_sets(self, case: Case) -> list[tuple]:
        first = case.make_inputs(self.device, 0)
        count = self.rotate
        if count is None:
            per_set = max(_nbytes(first), 1)
            count = math.ceil(self.timing.rotate_bytes / per_set)
            if self.device.type == "cuda":
                count = min(count, torch.cuda.mem_get_info(self.device)[0] // 4 // per_set)
            count = max(1, min(count, self.timing.max_rotate))
        if case.max_sets is not None:
            count = min(count, case.max_sets)
        return [first] + [case.make_inputs(self.device, seed) for seed in range(1, count)]

    def spent(self) -> str:
        return f"time budget of {self.budget_s:g} s spent"


def _peak_memory(fn: Callable[..., Any], inputs: tuple, device: torch.device) -> int | None:
    """Peak device memory one call adds on top of what is already allocated; None off CUDA.

    On a CPU, torch allocates outside Python's allocator (tracemalloc does not see it) and the
    process RSS only grows, so there is no honest per-call number to give.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn(*inputs)
    torch.cuda.synchronize(device)
    del out
    return torch.cuda.max_memory_allocated(device) - base


def _flush_buffer(device: torch.device, timing: Timing) -> torch.Tensor | None:
    if device.type != "cuda" or not timing.flush_bytes:
        return None
    return torch.empty(timing.flush_bytes, dtype=torch.int8, device=device)


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _on(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


# ---- reading and writing results -----------------------------------------------------------------

CSV_COLUMNS = ("date_utc", "git_sha", "git_dirty", "machine", "bench", "size", "case", "contender",
               "status", "time_ms", "p20_ms", "p80_ms", "speedup", "tflops", "gbps", "pct_floor",
               "peak_mem_bytes", "message")


def write_results(rows: list[dict], out_dir: Path | str) -> list[Path]:
    """Append ``rows`` (dicts of :class:`Row`) to ``<out_dir>/<bench>.jsonl``; rewrite its CSV.

    The CSV summary (``<bench>.csv``) is regenerated from the whole JSONL file, one line per row
    ever recorded, so the two never disagree. Returns the JSONL paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        path = out_dir / f"{bench}.jsonl"
        with path.open("a") as f:
            for r in rows:
                if r["bench"] == bench:
                    f.write(json.dumps(r, sort_keys=True) + "\n")
        with path.with_suffix(".csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for r in read_results(path):
                prov = r["provenance"]
                writer.writerow({**{k: r.get(k) for k in CSV_COLUMNS},
                                 **{k: prov.get(k) for k in ("date_utc", "git_sha", "git_dirty")},
                                 "machine": prov.get("machine")})
        paths.append(path)
    return paths


def read_results(path: Path | str) -> list[dict]:
    """Every row recorded in one ``<bench>.jsonl`` file, oldest first."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def latest_run(rows: list[dict]) -> list[dict]:
    """The rows of the most recently appended run (the run id of the last row)."""
    return [r for r in rows if r["run_id"] == rows[-1]["run_id"]] if rows else []


# ---- one formatting for the terminal table and the Markdown table ----------------------------------

SUMMARY_HEADER = ("bench", "case", "contender", "time ms", "p20-p80 ms", "speedup", "% floor",
                  "TFLOP/s", "GB/s", "peak MiB", "status")


def summary_cells(row: dict, message_width: int | None = None) -> list[str]:
    """The :data:`SUMMARY_HEADER` cells of one row; a non-ok status carries its message."""
    def num(value, spec):
        return "-" if value is None else format(value, spec)

    status = row["status"]
    if status != OK and row["message"]:
        message = row["message"].replace("\n", " ").replace("|", "/")
        if message_width is not None and len(message) > message_width:
            message = message[: message_width - 3] + "..."
        status = f"{status}: {message}"
    mem = row["peak_mem_bytes"]
    mem = "-" if row["status"] != OK else "n/a" if mem is None else f"{mem / 2**20:.1f}"
    spread = "-" if row["p20_ms"] is None else f"{row['p20_ms']:.4g}-{row['p80_ms']:.4g}"
    speedup = "-" if row["speedup"] is None else format_speedup(row["speedup"])
    return [row["bench"], row["case"], row["contender"], num(row["time_ms"], ".4g"), spread, speedup,
            num(row["pct_floor"], ".1f"), num(row["tflops"], ".3g"), num(row["gbps"], ".4g"), mem, status]


def format_speedup(speedup: float) -> str:
    """``1.23x``; two significant digits below 0.1x so a slow contender does not read as 0."""
    return f"{speedup:.2f}x" if speedup >= 0.1 else f"{speedup:.2g}x"


def as_dicts(rows: list[Row]) -> list[dict]:
    """Rows as plain dicts, the form that is written, read back, printed and plotted."""
    return [asdict(r) for r in rows]


def _progress_line(row: Row) -> str:
    cells = summary_cells(asdict(row), message_width=100)
    return "  ".join(cells[1:4] + cells[5:6] + cells[-1:])
