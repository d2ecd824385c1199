#!/usr/bin/env bash
# Set everything up, then run the whole test suite. Exit codes: pytest's, except that
# "no tests collected" (pytest exit 5) becomes 3 with a message, since running no test is no pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
export TRITON_INTERPRET=${TRITON_INTERPRET:-1}
.venv/bin/python -m pytest -n 2 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "ERROR: pytest collected no tests; that is not a pass" >&2
    exit 3
fi
exit "$rc"
