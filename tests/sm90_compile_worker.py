"""Compile Triton kernels for sm_90 without a GPU; used by tests/test_sm90_compile.py.

    python tests/sm90_compile_worker.py < specs.json > results.json

Each spec names ``id``, ``module``, ``kernel``, ``num_warps``, ``num_stages`` and ``args``: every kernel
argument in order, as ``["ptr", "bf16"]`` (a 16-byte aligned pointer), ``["int", v]``,
``["float", v]`` or ``["const", v]`` (a ``tl.constexpr``). Arguments are specialised the way a
launch specialises them: an int equal to 1 becomes a constant, an int divisible by 16 and every
pointer carry the divisibility hint that enables vectorised and asynchronous copies. Runs with TRITON_INTERPRET=0
(under the interpreter ``@triton.jit`` builds interpreter objects that cannot be compiled). For
each spec it prints the resources ``cuobjdump -res-usage`` reports for the cubin (registers, stack,
local and static shared bytes), the dynamic shared memory Triton asks for, and counts of PTX / SASS
patterns the tests look for.
"""
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

SM90 = GPUTarget("cuda", 90, 32)
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
PATTERNS = {
    "wgmma": ("ptx", r"wgmma\.mma_async"),
    "div_rn": ("ptx", r"div\.rn\.f32"),
    "rne_add": ("sass", r"FADD\S* R\d+, R\d+, 12582912\b"),       # x + 1.5 * 2**23
    "rne_sub": ("sass", r"FADD\S* R\d+, R\d+, -12582912\b"),      # ... - 1.5 * 2**23
}


def _specialise(args: list) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` of ``ASTSource`` for ``args`` (see the module docstring)."""
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, (kind, value)) in enumerate(args):
        if kind == "const" or (kind == "int" and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif kind == "ptr":
            signature[name], attrs[(i,)] = f"*{value}", [["tt.divisibility", 16]]
        elif kind == "int":
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif kind == "float":
            signature[name] = "fp32"
        else:
            raise ValueError(f"argument {name}: unknown kind {kind!r}")
    return signature, constexprs, attrs


def _cuobjdump(cubin: bytes) -> tuple[dict[str, int], str]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(NVIDIA_BIN / "cuobjdump"), "-res-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
        sass = subprocess.run([str(NVIDIA_BIN / "cuobjdump"), "-sass", f.name], check=True,
                              capture_output=True, text=True).stdout
    usage = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    return usage, sass


def compile_spec(spec: dict) -> dict:
    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    signature, constexprs, attrs = _specialise(spec["args"])
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=SM90,
                              options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
    usage, sass = _cuobjdump(compiled.asm["cubin"])
    texts = {"ptx": compiled.asm["ptx"], "sass": sass}
    counts = {name: len(re.findall(rx, texts[where])) for name, (where, rx) in PATTERNS.items()}
    return {"id": spec["id"], **usage, "dynamic_shared": compiled.metadata.shared, **counts}


def main() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run with TRITON_INTERPRET=0: interpreted kernels cannot be compiled")
    specs = json.load(sys.stdin)
    json.dump([compile_spec(s) for s in specs], sys.stdout)


if __name__ == "__main__":
    main()
