"""The benchmark harness on a toy op (scale by 2): statuses, ratios, floor arithmetic, results files,
charts, the ``python -m benchmarks.run`` entry point, and a smoke run over the real bench modules."""
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from benchmarks import run as bench_run
from benchmarks.harness import (ERROR, FAILING, OK, SKIPPED, UNAVAILABLE, Benchmark, Case,
                                Contender, Peaks, Timing, as_dicts, latest_run, read_results,
                                run_benchmark, write_results)
from benchmarks.plot import markdown_table, plot_benchmark

REPO = Path(__file__).resolve().parents[1]
FAKE_PEAKS = Peaks(flops_per_s=3e9, bytes_per_s=2e10, launch_s=5e-6, method="injected by the test")
FAST = Timing(warmup_ms=1, rep_ms=2, min_reps=3, max_reps=10, max_rotate=3, rotate_bytes=1 << 20,
              flush_bytes=0)


class Counted:
    """A contender function that counts its calls and the distinct inputs it was given."""

    def __init__(self, fn):
        self.fn, self.calls, self.inputs = fn, 0, set()

    def __call__(self, x):
        self.calls += 1
        self.inputs.add(x.data_ptr())
        return self.fn(x)


def _inputs(n):
    return lambda device, seed: (torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(device),)


def _cases(size):
    # one flops-bound and one bytes-bound case under FAKE_PEAKS
    return [Case("n256_flops", _inputs(256), flops=1e6, bytes=2048),
            Case("n4096_bytes", _inputs(4096), flops=4096, bytes=2e6)]


def _check(out, ref):
    return None if torch.equal(out, ref) else f"max abs err {(out - ref).abs().max().item():.3g}"


def _boom(x):
    raise RuntimeError("boom")


def _slow(x):
    time.sleep(0.002)
    return x * 2


def toy():
    """The scale-by-2 benchmark with every kind of contender; functions are counted."""
    fns = {"torch": Counted(lambda x: x * 2), "add": Counted(lambda x: x + x), "slow": Counted(_slow),
           "wrong": Counted(lambda x: x * 3), "missing": Counted(lambda x: x * 2),
           "raises": Counted(_boom)}
    contenders = [Contender(n, f) for n, f in fns.items() if n != "missing"]
    contenders.append(Contender("missing", fns["missing"], unavailable=lambda: "needs a GPU"))
    bench = Benchmark(name="toy", cases=_cases, contenders=contenders,
                      reference=lambda x: x * 2, check=_check, baseline="torch")
    return bench, fns


@pytest.fixture(scope="module")
def toy_run():
    bench, fns = toy()
    rows = run_benchmark(bench, size="tiny", device="cpu", peaks=FAKE_PEAKS, timing=FAST)
    return rows, fns


def _by(rows, contender):
    return [r for r in rows if r.contender == contender]


def test_wrong_and_raising_contenders_fail_and_are_never_timed(toy_run):
    rows, fns = toy_run
    for name, message in (("wrong", "max abs err"), ("raises", "RuntimeError: boom")):
        assert [r.status for r in _by(rows, name)] == [FAILING, FAILING]
        assert all(message in r.message and r.time_ms is None and r.reps == 0 for r in _by(rows, name))
        assert fns[name].calls == 2  # one correctness call per case, no warm-up, no reps


def test_unavailable_contender_is_skipped_with_its_reason(toy_run):
    rows, fns = toy_run
    assert [(r.status, r.message) for r in _by(rows, "missing")] == [(UNAVAILABLE, "needs a GPU")] * 2
    assert fns["missing"].calls == 0


def test_correct_contenders_are_timed_over_rotated_inputs(toy_run):
    rows, fns = toy_run
    for name in ("torch", "add", "slow"):
        for r in _by(rows, name):
            assert r.status == OK and r.message == ""
            assert r.reps >= FAST.min_reps and r.rotate == FAST.max_rotate
            assert 0 < r.p20_ms <= r.time_ms <= r.p80_ms
            assert r.peak_mem_bytes is None  # no honest per-call number on a CPU
        assert len(fns[name].inputs) == 2 * FAST.max_rotate  # every input set of both cases ran


def test_speedups_are_against_the_baseline_of_the_same_run(toy_run):
    rows, _ = toy_run
    for case in ("n256_flops", "n4096_bytes"):
        by_name = {r.contender: r for r in rows if r.case == case}
        base = by_name["torch"]
        assert base.speedup == 1.0
        for r in by_name.values():
            assert r.baseline == "torch"
            if r.status == OK:
                assert r.speedup == base.time_ms / r.time_ms
            else:
                assert r.speedup is None
        assert by_name["slow"].speedup < 1.0  # sleeps 2 ms against a microsecond op


def test_floor_and_throughput_come_from_the_given_peaks(toy_run):
    rows, _ = toy_run
    flops_bound = {"n256_flops": 1e6 / 3e9, "n4096_bytes": 2e6 / 2e10}  # max() of the two terms
    for r in rows:
        assert r.peaks == {"flops_per_s": 3e9, "bytes_per_s": 2e10, "launch_s": 5e-6,
                           "method": "injected by the test"}
        if r.status != OK:
            continue
        floor_s = flops_bound[r.case] + 5e-6
        t = r.time_ms / 1e3
        assert r.floor_ms == pytest.approx(floor_s * 1e3, rel=1e-12)
        assert r.pct_floor == pytest.approx(100 * floor_s / t, rel=1e-12)
        assert r.tflops == pytest.approx(r.flops / t / 1e12, rel=1e-12)
        assert r.gbps == pytest.approx(r.bytes / t / 1e9, rel=1e-12)


def test_rows_carry_provenance(toy_run):
    rows, _ = toy_run
    prov = rows[0].provenance
    for key in ("machine", "gpu", "driver", "cuda", "torch", "triton", "python", "cpu", "git_sha",
                "git_dirty", "date_utc"):
        assert key in prov
    assert prov["torch"] == torch.__version__
    assert prov["git_sha"] == "n/a" or re.fullmatch(r"[0-9a-f]{40}", prov["git_sha"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["date_utc"])
    assert all(r.provenance == prov and r.run_id == rows[0].run_id for r in rows)


def test_results_are_appended_reread_and_summarised(toy_run, tmp_path):
    rows = as_dicts(toy_run[0])
    (path,) = write_results(rows, tmp_path)
    assert path == tmp_path / "toy.jsonl" and read_results(path) == json.loads(json.dumps(rows))
    second = [{**r, "run_id": "second"} for r in rows]
    write_results(second, tmp_path)
    assert len(read_results(path)) == 2 * len(rows)
    assert latest_run(read_results(path)) == second
    csv_lines = (tmp_path / "toy.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 2 * len(rows) and csv_lines[0].startswith("date_utc,git_sha")


def test_chart_and_markdown_show_every_status(toy_run, tmp_path):
    rows = as_dicts(toy_run[0])
    png = plot_benchmark(rows, tmp_path / "toy.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = markdown_table(rows)
    assert rows[0]["provenance"]["machine"] in md and "not speed claims" in md
    assert md.count("\n| ") == 1 + len(rows)
    for status in (OK, FAILING, UNAVAILABLE):
        assert f"| {status}" in md


def test_budget_and_broken_cases_time_nothing():
    bench, fns = toy()
    spent = run_benchmark(bench, size="tiny", device="cpu", peaks=FAKE_PEAKS, timing=FAST, budget_s=0)
    assert {(r.status, r.message) for r in spent} == {(SKIPPED, "time budget of 0 s spent")}
    assert sum(f.calls for f in fns.values()) == 0

    def broken(device, seed):
        raise ValueError("no such shape")

    bench.cases = lambda size: [Case("broken", broken, flops=0, bytes=0)]
    rows = run_benchmark(bench, size="tiny", device="cpu", peaks=FAKE_PEAKS, timing=FAST)
    assert {(r.status, r.message) for r in rows} == {(ERROR, "case setup raised ValueError: no such shape")}


def test_a_case_caps_its_input_sets():
    """``Case.max_sets``: a case whose inputs take minutes to build gets no more sets than it allows,
    whatever the timing's rotation asks for."""
    built = []

    def make(device, seed):
        built.append(seed)
        return (torch.full((8,), seed + 1.0),)

    bench, _ = toy()
    bench.cases = lambda size: [Case("capped", make, flops=0, bytes=64, max_sets=1)]
    rows = run_benchmark(bench, size="tiny", device="cpu", peaks=FAKE_PEAKS, timing=FAST)
    assert built == [0] and {r.rotate for r in rows if r.status == OK} == {1}
    bench.cases = lambda size: [Case("uncapped", make, flops=0, bytes=64)]
    built.clear()
    run_benchmark(bench, size="tiny", device="cpu", peaks=FAKE_PEAKS, timing=FAST)
    assert built == list(range(FAST.max_rotate))


def test_bad_benchmark_definitions_are_rejected():
    bench, _ = toy()
    bench.baseline = "nobody"
    with pytest.raises(ValueError, match="baseline 'nobody' is not a contender"):
        run_benchmark(bench, size="tiny", device="cpu", peaks=FAKE_PEAKS, timing=FAST)
    with pytest.raises(ValueError, match="size must be one of"):
        run_benchmark(toy()[0], size="huge", device="cpu", peaks=FAKE_PEAKS, timing=FAST)


TOY_MODULE = """
import torch
from benchmarks.harness import Benchmark, Case, Contender

def cases(size):
    return [Case("n512", lambda device, seed: (torch.full((512,), seed + 1.0, device=device),),
                 flops=512, bytes=4096)]

BENCHMARK = Benchmark(
    name="{name}", cases=cases,
    contenders=[Contender("torch", lambda x: x * 2), Contender("add", lambda x: x + x){extra}],
    reference=lambda x: x * 2,
    check=lambda out, ref: None if torch.equal(out, ref) else "wrong values",
    baseline="torch")
"""


def _bench_dir(root, **modules):
    root.mkdir()
    for name, text in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(text))
    return root


def test_run_entry_point_end_to_end(tmp_path, capsys):
    good = _bench_dir(tmp_path / "good", bench_toy=TOY_MODULE.format(name="toy", extra=""))
    out = tmp_path / "out"
    assert bench_run.main(["--size", "tiny", "--bench-dir", str(good), "--out", str(out)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert "not speed claims" in "\n".join(table)
    assert table[-3].split()[:3] == ["bench", "case", "contender"]  # the summary table comes last
    assert [line.split()[2] for line in table[-2:]] == ["torch", "add"]
    assert {p.name for p in out.iterdir()} == {"toy.jsonl", "toy.csv", "toy.png"}
    assert [r["status"] for r in read_results(out / "toy.jsonl")] == [OK, OK]


def test_run_exits_nonzero_on_a_wrong_contender_or_a_broken_module(tmp_path, capsys):
    bad = _bench_dir(tmp_path / "bad",
                     bench_toy=TOY_MODULE.format(name="toy", extra=', Contender("wrong", lambda x: x)'),
                     bench_other=TOY_MODULE.format(name="other", extra=""),
                     bench_broken="import no_such_module_here\n")
    out = tmp_path / "out"
    assert bench_run.main(["--bench-dir", str(bad), "--out", str(out), "--only", "toy"]) == 1
    assert "FAILING: wrong values" in capsys.readouterr().out
    assert not (out / "other.jsonl").exists()
    assert bench_run.main(["--bench-dir", str(bad), "--out", str(out), "--only", "other"]) == 0
    assert bench_run.main(["--bench-dir", str(bad), "--out", str(out), "--only", "broken"]) == 1
    assert "ModuleNotFoundError" in capsys.readouterr().out
    assert bench_run.main(["--bench-dir", str(bad), "--out", str(out), "--only", "nothing"]) == 2
    capsys.readouterr()
    # --skip leaves a benchmark (or a broken module) out; a name that is no benchmark is refused
    assert bench_run.main(["--bench-dir", str(bad), "--out", str(out), "--skip", "toy", "--skip",
                           "bench_broken"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()[-2:]] == ["other"] * 2
    assert bench_run.main(["--bench-dir", str(bad), "--out", str(out), "--skip", "tyo"]) == 2
    assert "--skip tyo: no such benchmark (there are broken, other, toy)" in capsys.readouterr().err


def test_full_run_budget_passes_unused_time_on():
    assert bench_run.share_of_budget(540, 0, 3) == 180
    assert bench_run.share_of_budget(540, 30, 2) == 255  # the first took 30 s of its 180
    assert bench_run.share_of_budget(540, 400, 1) == 140
    assert bench_run.share_of_budget(540, 600, 1) == 1.0  # overrun: still checks, then skips


def test_a_total_budget_is_shared_by_the_benchmarks_of_a_run(tmp_path, capsys, monkeypatch):
    two = _bench_dir(tmp_path / "two", bench_a=TOY_MODULE.format(name="a", extra=""),
                     bench_b=TOY_MODULE.format(name="b", extra=""))
    budgets = []
    real = bench_run.run_benchmark
    monkeypatch.setattr(bench_run, "run_benchmark",
                        lambda bench, **kw: budgets.append(kw["budget_s"]) or real(bench, **kw))
    argv = ["--size", "tiny", "--bench-dir", str(two), "--out", str(tmp_path / "o"), "--total-s", "100"]
    assert bench_run.main(argv) == 0
    assert budgets[0] == pytest.approx(50, abs=1)  # half each of 100 s ...
    assert 90 < budgets[1] <= 100  # ... and what the first one did not use goes to the second
    with pytest.raises(SystemExit):
        bench_run.main(["--budget-s", "10", "--total-s", "100"])
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_full_size_refuses_without_a_gpu(capsys):
    assert bench_run.main(["--size", "full"]) == 2
    assert "--size full needs a CUDA GPU" in capsys.readouterr().err


BENCH_MODULES = sorted(p.stem for p in (REPO / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_smoke_run_over_the_real_bench_modules(tmp_path, module):
    """``benchmarks.run --size tiny --only <module>`` for every bench module in the tree (one test
    each, so the suite's workers share them): every contender checks and times, results are written."""
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--size", "tiny", "--only", module,
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "contender" in proc.stdout
    assert len(list(tmp_path.glob("*.jsonl"))) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_script_refuses_without_a_gpu():
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "bench"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sees no CUDA GPU" in proc.stderr
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "session"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sees no CUDA GPU" in proc.stderr
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "everything"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_gpu_session_skips_only_benchmarks_that_exist():
    """An unknown ``--skip`` makes benchmarks.run exit 2, which would cost a lent GPU its whole
    benchmark step: every name the session skips is a benchmark of the tree."""
    script = (REPO / "scripts" / "gpu_check.sh").read_text()
    skipped = re.findall(r"--skip (\S+)", script)
    assert skipped == ["codec_decode"]
    names = {b.name for b in bench_run.discover()[0]}
    assert set(skipped) <= names
