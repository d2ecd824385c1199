"""Decode time of a record-sized artifact on one CPU core (issue 19: goal < 5 s for 36M values).

Cases: "full": the record's quantised tensors (RECORD_STACK.md C.3: per layer c_q 512x512, c_k /
c_v 256x512, proj 512x512, mlp.fc 2048x512, mlp.proj 512x2048, for 11 layers, and the tied
embedding 8192x512; 35.9M values, int6 matrices, int7 embedding, 12.85-sigma clip, Student-t
weights: :func:`benchmarks.codec_artifacts.synthetic_entries`); "tiny": two layers at width 64.
Each input set holds the codes, an artifact of them in the current format written by
:func:`pgolf.artifact.format.save_artifact` (in a temporary folder that lives as long as the set)
and one context-coded stream per role of them (:func:`pgolf.codec.ctx_encode`, with the column
priors of :func:`pgolf.artifact.format.prior_source` wherever there is one).

Contenders: ``load_artifact`` (the baseline: read, verify and decode the whole file as pgolf
does, index, SHA-256, payloads and side stream) and ``ctx_decode_every_role`` (every matrix through
the context-modelled decoder: the slowest coding the format allows, whatever the writer chose
for these codes). The check: every tensor's codes exactly the originals. Both run in this process
on the CPU, single-threaded C++ (the device argument only places nothing). FLOPs: 0; bytes: the
codes written plus the artifact read.

``run.py --size full`` refuses a CPU; ``python -m benchmarks.codec_artifacts --speed`` runs the full
case on one CPU core through the same harness and records the seconds.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.codec_artifacts import synthetic_entries
from benchmarks.harness import Benchmark, Case, Contender
from pgolf import codec
from pgolf.artifact.format import load_artifact, prior_source, role, save_artifact
from pgolf.quant.qtensor import QTensor


class _Inputs:
    """One input set: the codes, the artifact file (its folder removed with this object) and the
    per-role context-coded streams with the names and column priors of their tensors."""

    def __init__(self, entries: dict):
        self.codes = {n: t.codes.numpy() for n, t in entries.items() if isinstance(t, QTensor)}
        self._dir = tempfile.TemporaryDirectory(prefix="pgolf-bench-codec-")
        self.path = Path(self._dir.name) / "model.pgolf"
        self.artifact_bytes = save_artifact(self.path, config={}, tensors=entries).total_bytes
        groups: dict[tuple[str, int], list[str]] = {}
        for n, t in entries.items():
            if isinstance(t, QTensor):
                groups.setdefault((role(n), t.bits), []).append(n)
        qs = {n: t for n, t in entries.items() if isinstance(t, QTensor)}
        self.streams = []
        for (_, bits), names in groups.items():
            sources = [prior_source(n, qs) for n in names]
            priors = [None if m is None else codec.prior_classes(qs[m].scale) for m in sources]
            self.streams.append((names, priors, codec.ctx_encode([self.codes[n] for n in names], bits, priors=priors)))


def _make(kind: str):
    def make(device: torch.device, seed: int):
        return (_Inputs(synthetic_entries(kind, seed=11 + seed)),)
    return make


def cases(size: str) -> list[Case]:
    kind = "record" if size == "full" else "tiny"
    values = sum(t.codes.numel() for t in synthetic_entries(kind).values() if isinstance(t, QTensor))
    name = "record_11x512_vocab8192" if size == "full" else "tiny_2x64"
    # bytes: the codes written; the artifact read is about 0.4 byte a value at int6
    return [Case(name, _make(kind), 0.0, 1.4 * values, max_sets=1)]  # a full set takes minutes to build


def load_artifact_codes(inputs: _Inputs) -> dict[str, np.ndarray]:
    art = load_artifact(inputs.path)
    return {n: t.codes.numpy() for n, t in art.tensors.items() if isinstance(t, QTensor)}


def ctx_decode_every_role(inputs: _Inputs) -> dict[str, np.ndarray]:
    out = {}
    for names, priors, stream in inputs.streams:
        out.update(zip(names, codec.ctx_decode(stream, priors=priors)))
    return out


def reference(inputs: _Inputs) -> dict[str, np.ndarray]:
    return inputs.codes


def check(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str | None:
    """Every tensor's codes present and exactly equal to the originals."""
    if sorted(out) != sorted(ref):
        return f"decoded tensors {sorted(out)} differ from {sorted(ref)}"
    for n, want in ref.items():
        got = np.asarray(out[n])
        if got.shape != want.shape or not np.array_equal(got, want):
            return f"tensor {n!r}: decoded codes differ from the originals"
    return None


def _unavailable() -> str | None:
    return None if codec.available() else "the pgolf C++ codec extension is not built"


BENCHMARK = Benchmark(
    name="codec_decode",
    cases=cases,
    contenders=[Contender("load_artifact", load_artifact_codes, _unavailable),
                Contender("ctx_decode_every_role", ctx_decode_every_role, _unavailable)],
    reference=reference,
    check=check,
    baseline="load_artifact",
)
