#!/usr/bin/env bash
# What only a GPU can show, with the Python that already has torch + triton (no venv, no network):
#
#   bash scripts/gpu_check.sh tests    # the tests marked gpu: bf16 kernels, exact rounding, CUDA-graph capture
#   bash scripts/gpu_check.sh bench    # python -m benchmarks.run --size full (540 s budget), results in benchmarks/results/
#   bash scripts/gpu_check.sh demo     # the gpu-demo training run (torch.compile, bf16 autocast) to runs/gpu-demo
#
# Each stage is meant to fit in 10 minutes on one H100/H200 (benchmark budget 540 s, demo training
# capped at 360 s) -- not yet timed on a GPU; run them one after another (`all` does). The C++
# codec is built in place first when it is missing (needs a compiler and pybind11).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stage=${1:-all}
case "$stage" in tests|bench|demo|all) ;; *) echo "usage: $0 tests|bench|demo|all" >&2; exit 2 ;; esac
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
"$PY" -c "import torch, triton; print(f'# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}')"
if [ "$stage" = tests ] || [ "$stage" = all ]; then
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/
fi
if [ "$stage" = bench ] || [ "$stage" = all ]; then
    "$PY" -m benchmarks.run --size full
fi
if [ "$stage" = demo ] || [ "$stage" = all ]; then
    "$PY" -m pgolf.cli train --preset gpu-demo --overwrite
fi
