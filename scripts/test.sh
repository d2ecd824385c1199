#!/usr/bin/env bash
# Set everything up, run the whole test suite, then (full runs only, i.e. no pytest arguments) the
# codec tests again under AddressSanitizer + UBSan. Exit codes: pytest's, except that "no tests
# collected" (pytest exit 5) becomes 3 with a message, since running no test is no pass.
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
if [ "$rc" -ne 0 ] || [ "$#" -gt 0 ]; then
    exit "$rc"
fi
PYTHON="$PWD/.venv/bin/python" exec bash scripts/sanitize.sh
