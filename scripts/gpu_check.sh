#!/usr/bin/env bash
# What only a GPU can show, with the Python that already has torch + triton (no venv, no network):
#
#   bash scripts/gpu_check.sh session  # ONE time-boxed command for a lent device (~9 min in all, below)
#   bash scripts/gpu_check.sh tests    # the tests marked gpu: bf16 kernels, exact rounding, CUDA-graph capture
#   bash scripts/gpu_check.sh bench    # python -m benchmarks.run --size full (540 s budget), results in benchmarks/results/
#   bash scripts/gpu_check.sh demo     # the gpu-demo training run (torch.compile, bf16 autocast) to runs/gpu-demo
#
# `session` is for a device lent for minutes, not hours: every step has its own wall-clock limit
# (GPU_TESTS_S, GPU_BENCH_S, GPU_DEMO_S seconds; defaults 180, 270, 60 -- about 9 min with the
# codec build and start-up), a step that fails or runs out of time does not stop the next one, and
# everything lands in OUT (default benchmarks/results/gpu-session): the machine and versions, each
# step's log and exit code (124: out of time), the gpu tests' JUnit XML, the benchmark results.
# Correctness first: the gpu tests run before any timing. GPU_DEMO_S=0 skips the demo run.
# The other stages are meant to fit 10 minutes each on one H100/H200; none has been timed on a GPU.
# The C++ codec is built in place first when it is missing (needs a compiler and pybind11).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stage=${1:-all}
case "$stage" in session|tests|bench|demo|all) ;; *) echo "usage: $0 session|tests|bench|demo|all" >&2; exit 2 ;; esac
if ! "$PY" -c "import torch, triton" 2>/dev/null; then
    echo "error: $PY cannot import torch and triton (set PYTHON=/path/to/python)" >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: $PY sees no CUDA GPU (torch.cuda.is_available() is False)" >&2
    exit 2
fi
export TRITON_INTERPRET=0
"$PY" -c "import pgolf._codec" 2>/dev/null || "$PY" setup.py -q build_ext --inplace
machine=$("$PY" -c "import torch, triton, platform; print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, \
triton {triton.__version__}, python {platform.python_version()}')")
echo "# $machine"

if [ "$stage" = session ]; then
    out=${OUT:-benchmarks/results/gpu-session}
    mkdir -p "$out"
    { echo "machine: $machine"; echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"; date -u; } \
        > "$out/machine.txt"
    step() {  # step NAME SECONDS COMMAND...: run with a limit, keep its log and exit code, go on
        local name=$1 limit=$2; shift 2
        local rc=0
        echo "## $name (limit ${limit} s)"
        timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1 || rc=$?
        echo "$name rc=$rc" | tee -a "$out/steps.txt"
        tail -n 5 "$out/$name.log"
    }
    step gpu_tests "${GPU_TESTS_S:-180}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ \
        --junitxml "$out/gpu_tests.xml"
    # codec_decode is left out: it times C++ on the CPU (benchmarks.codec_artifacts --speed measures it
    # anywhere) and building its record-sized input takes minutes of the GPU's time.
    step bench "${GPU_BENCH_S:-270}" "$PY" -m benchmarks.run --size full --total-s "$(( ${GPU_BENCH_S:-270} - 30 ))" \
        --skip codec_decode --out "$out/bench"
    if [ "${GPU_DEMO_S:-60}" -gt 0 ]; then
        step demo "$(( ${GPU_DEMO_S:-60} + 60 ))" "$PY" -m pgolf.cli train --preset gpu-demo --overwrite \
            --set train.max_wallclock_seconds="${GPU_DEMO_S:-60}" --set train.run_dir="$out/gpu-demo"
    fi
    exit 0
fi
if [ "$stage" = tests ] || [ "$stage" = all ]; then
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/
fi
if [ "$stage" = bench ] || [ "$stage" = all ]; then
    "$PY" -m benchmarks.run --size full
fi
if [ "$stage" = demo ] || [ "$stage" = all ]; then
    "$PY" -m pgolf.cli train --preset gpu-demo --overwrite
fi
