"""pgolf benchmarks: one harness, one ``bench_<family>.py`` module per op family, recorded results.

Run them all with ``python -m benchmarks.run`` (see ``benchmarks/README.md``). A benchmark module
defines ``BENCHMARK = Benchmark(...)`` from the names re-exported here.
"""
from benchmarks.harness import Benchmark, Case, Contender

__all__ = ["Benchmark", "Case", "Contender"]
