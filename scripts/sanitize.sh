#!/usr/bin/env bash
# Build pgolf._codec with AddressSanitizer + UBSan (PGOLF_SANITIZE=1, see setup.py) in a temporary
# copy of the repository and run the codec tests against it. The working tree is not touched.
# Exit status: non-zero on any test failure or sanitizer report. Extra arguments go to pytest.
# Usage: bash scripts/sanitize.sh [-x] [-k expr]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import pybind11, setuptools, pytest, numpy, torch" 2>/dev/null; then
    echo "ERROR: $PY needs pybind11, setuptools, pytest, numpy and torch (set PYTHON=... or pip install them)" >&2
    exit 1
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pgolf-sanitize.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cp -r setup.py pyproject.toml csrc pgolf triton_kernels tests benchmarks "$tmp"/
rm -f "$tmp"/pgolf/_codec*.so
cd "$tmp"
PGOLF_SANITIZE=1 "$PY" setup.py -q build_ext --inplace >build.log 2>&1 || { cat build.log; exit 1; }
libasan=$(${CXX:-g++} -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
    echo "ERROR: libasan.so not found (${CXX:-g++} -print-file-name=libasan.so gave '$libasan')" >&2
    exit 1
fi
# libstdc++ is preloaded too: ASan intercepts __cxa_throw only if it is there when ASan starts.
preload="$libasan $(${CXX:-g++} -print-file-name=libstdc++.so)"
tests=()
for t in test_bitpack test_rans test_codec_ctx test_codec_fuzz test_artifact; do
    [ -f "tests/$t.py" ] && tests+=("tests/$t.py")
done
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
LD_PRELOAD="$preload" PYTHONPATH="$tmp" "$PY" - <<'PYEOF'
import pgolf._codec, os, sys
if not pgolf._codec.__file__.startswith(os.getcwd()):
    sys.exit(f"sanitize.sh: imported the wrong extension: {pgolf._codec.__file__}")
PYEOF
LD_PRELOAD="$preload" PYTHONPATH="$tmp" "$PY" -m pytest -q -p no:cacheprovider -p no:faulthandler --capture=sys "${tests[@]}" "$@"
