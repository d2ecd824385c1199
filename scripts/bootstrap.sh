#!/usr/bin/env bash
# Create .venv (once) and install pgolf into it with what the tests need. Idempotent: a second
# run only reinstalls when pyproject.toml, setup.py or csrc/ changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PGOLF_VENV:-.venv}
stamp="$VENV/.pgolf-installed"
want=$(cat pyproject.toml setup.py csrc/* 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# A CPU build of torch unless one is already there (an unpinned torch pulls CUDA wheels).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q "${PGOLF_TORCH_SPEC:-torch==2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -e ".[test]"
echo "$want" > "$stamp"
