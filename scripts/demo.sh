#!/usr/bin/env bash
# The main job on the embedded default: build the demo corpus from CPython's own docs, train the
# `demo` preset (`gpu-demo` when a GPU is present), export the artifact, reload it and score it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
preset=demo
if .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    preset=gpu-demo
fi
exec .venv/bin/pgolf train --preset "$preset" --overwrite "$@"
