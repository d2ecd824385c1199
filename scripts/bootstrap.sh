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
# pip, quiet; drops only the "Location ... is ignored" notes some pip configurations print.
pip_install() {
    "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}
pip_install --upgrade pip
# A CPU build of torch unless one is already there (an unpinned torch pulls CUDA wheels).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    pip_install "${PGOLF_TORCH_SPEC:-torch==2.13.0}"
fi
pip_install -e ".[test]"
echo "$want" > "$stamp"
