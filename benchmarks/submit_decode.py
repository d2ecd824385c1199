"""What a rans submission pays at run time for carrying pgolf's C++ codec as source: the seconds to
compile it (pgolf.submit.native, as the generated train_gpt.py does) and to decode a record-sized
artifact with that build on one CPU core.

    python -m benchmarks.submit_decode [--out DIR]

The artifact: the record-shaped synthetic set of :mod:`benchmarks.codec_artifacts` (Student-t
weights, 11 x 512, vocab 8192, MLP 4x; int6 matrices, int7 embedding) written by
``save_artifact(codec="rans")``. A fresh interpreter, pinned to one core with one torch thread,
compiles the codec into an empty folder (wall seconds, every compiler process counted), then
times ``load_artifact`` (wall and CPU seconds) and, as the slow case, ``ctx_decode`` of the same
codes context-coded as one stream per bit width (what the writer picks when it codes smaller).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.codec_artifacts import synthetic_entries
from pgolf import codec
from pgolf.artifact.format import save_artifact
from pgolf.quant.qtensor import QTensor

CHILD = """
import json, os, sys, time
os.sched_setaffinity(0, {0})
import torch
torch.set_num_threads(1)
from pgolf.submit.native import build_codec
from pgolf.submit.script import native_sources
t0 = time.perf_counter()
compiled = build_codec(native_sources(), sys.argv[2])
build_s = time.perf_counter() - t0
import pgolf._codec
assert pgolf._codec.__file__.startswith(sys.argv[2])  # the run-time build, not the installed one
from pgolf import codec
from pgolf.artifact.format import load_artifact
timings = []
for _ in range(3):
    w, c = time.perf_counter(), time.process_time()
    load_artifact(sys.argv[1])
    timings.append((time.perf_counter() - w, time.process_time() - c))
streams = [open(p, "rb").read() for p in sys.argv[3:]]
w, c = time.perf_counter(), time.process_time()
for s in streams:
    codec.ctx_decode(s)
ctx = (time.perf_counter() - w, time.process_time() - c)
print(json.dumps({"build_wall_s": build_s, "compiled_s": compiled, "load_artifact_wall_cpu_s": timings,
                  "ctx_decode_wall_cpu_s": ctx}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for the artifact and the build (default: a temp folder)")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="submit_decode."))
    out.mkdir(parents=True, exist_ok=True)
    entries = synthetic_entries("record")
    artifact = out / "record.pgolf"
    info = save_artifact(artifact, config={}, tensors=entries, codec="rans")
    by_bits: dict[int, list] = {}
    for t in entries.values():
        if isinstance(t, QTensor):
            by_bits.setdefault(t.bits, []).append(t.codes.numpy())
    streams = []
    for bits, codes in by_bits.items():
        path = out / f"ctx{bits}.bin"
        path.write_bytes(codec.ctx_encode(codes, bits))
        streams.append(str(path))
    child = subprocess.run([sys.executable, "-c", CHILD, str(artifact), str(out / "build"), *streams],
                           capture_output=True, text=True, check=True)
    result = json.loads(child.stdout)
    result.update(artifact_bytes=info.total_bytes, values=sum(c.size for cs in by_bits.values() for c in cs))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
