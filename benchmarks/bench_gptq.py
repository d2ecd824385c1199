"""GPTQ of one model's matrices against round-to-nearest on the same fp16 scales.

Cases ("full"): the record stack's matrices (RECORD_STACK.md B.0, C.3): per layer c_q 512x512,
c_k / c_v 256x512, proj 512x512, mlp.fc 2048x512, mlp.proj 512x2048, for 11 layers, plus the tied
embedding 8192x512 as the output head; int6 matrices and an int7 embedding, sigma rule (SDClip) with
the record's k. The Hessians are ``X^T X`` of correlated random activations (a low-rank mix plus noise,
1,024 tokens per matrix; their values do not change the cost). "tiny": two 64x48 matrices.

Contenders: ``round_to_nearest`` (the baseline: the exporter's codes without a Hessian) and
``pgolf_gptq`` (:func:`pgolf.quant.gptq.gptq_codes`, blocks of 128, act-order; runs on the CPU in
float32, as the record's GPTQ does). The check: codes in range and the Hessian-weighted output error
``tr((W - Q) H (W - Q)^T)`` of every matrix no larger than round-to-nearest's (GPTQ's purpose).
FLOPs: the error-feedback updates, ``2 * rows * cols^2`` per matrix (each column updates the later ones
of its row); bytes: reading W and H and writing the codes.
"""
from __future__ import annotations

import torch

from benchmarks.harness import Benchmark, Case, Contender
from pgolf.quant.gptq import gptq_codes
from triton_kernels.fake_quant import quantize_codes, row_scales_reference

RECORD_LAYER = (("c_q", 512, 512, 13.0), ("c_k", 256, 512, 13.0), ("c_v", 256, 512, 13.0),
                ("proj", 512, 512, 13.0), ("fc", 2048, 512, 11.5), ("mlp_proj", 512, 2048, 11.5))


def _shapes(size: str) -> list[tuple[int, int, int, float]]:
    """``(rows, cols, bits, k)`` of every matrix of the case."""
    if size == "tiny":
        return [(64, 48, 6, 3.0), (48, 64, 6, 3.0)]
    return [(r, c, 6, k) for _ in range(11) for _, r, c, k in RECORD_LAYER] + [(8192, 512, 7, 14.0)]


def _make(shapes):
    def make(device: torch.device, seed: int):
        g = torch.Generator().manual_seed(seed)
        mats = []
        for rows, cols, bits, k in shapes:
            w = torch.randn(rows, cols, generator=g) * 0.02
            basis = torch.randn(cols // 8, cols, generator=g)
            x = torch.randn(1024, cols // 8, generator=g) @ basis + 0.1 * torch.randn(1024, cols, generator=g)
            scale = row_scales_reference(w, bits=bits, rule="sigma", sigma=k)
            mats.append((w, x.T @ x, scale, bits))
        return (mats,)
    return make


def cases(size: str) -> list[Case]:
    shapes = _shapes(size)
    flops = sum(2.0 * r * c * c for r, c, _, _ in shapes)
    nbytes = sum(4.0 * r * c + 4.0 * c * c + r * c for r, c, _, _ in shapes)
    name = "record_11x512_vocab8192" if size == "full" else "tiny_2_matrices"
    return [Case(name, _make(shapes), flops, nbytes)]


def round_to_nearest(mats) -> list[torch.Tensor]:
    return [quantize_codes(w, s, bits) for w, _, s, bits in mats]


def pgolf_gptq(mats) -> list[torch.Tensor]:
    return [gptq_codes(w, h, s, bits) for w, h, s, bits in mats]


def _error(w, h, s, codes) -> float:
    d = (w - codes.float() * s.float()[:, None]).double()
    return float(torch.trace(d @ h.double() @ d.T))


def reference(mats):
    """Round-to-nearest codes, with the inputs so the check can weigh each contender's error."""
    return round_to_nearest(mats), mats


def check(out: list[torch.Tensor], ref) -> str | None:
    """Codes int8 and in range, and no larger Hessian-weighted error than round-to-nearest's."""
    rtn, mats = ref
    for i, ((w, h, s, bits), c, r) in enumerate(zip(mats, out, rtn)):
        if c.shape != r.shape or c.dtype != torch.int8:
            return f"matrix {i}: codes {c.dtype} {tuple(c.shape)}, expected int8 {tuple(r.shape)}"
        qmax = 2 ** (bits - 1) - 1
        if c.abs().max().item() > qmax:
            return f"matrix {i}: a code exceeds {qmax}"
        if _error(w, h, s, c) > _error(w, h, s, r) * (1 + 1e-6):
            return f"matrix {i}: weighted error above round-to-nearest's"
    return None


BENCHMARK = Benchmark(
    name="gptq",
    cases=cases,
    contenders=[Contender("round_to_nearest", round_to_nearest), Contender("pgolf_gptq", pgolf_gptq)],
    reference=reference,
    check=check,
    baseline="round_to_nearest",
)
