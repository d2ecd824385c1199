"""One full Muon update (momentum, Newton-Schulz, scale, apply) of a model's matrix banks.

Cases ("full", for a GPU):
  * ``baseline``: the official 9 x 512 model, 8 query / 4 KV heads, MLP 2x. Per layer c_q 512x512,
    c_k 256x512, c_v 256x512, proj 512x512, fc 1024x512, mlp proj 512x1024 -> banks
    18x512x512, 18x256x512, 9x1024x512, 9x512x1024.
  * ``record``: the record stack's banks 22x512x512, 22x256x512, 11x2048x512, 11x512x2048.
"tiny" (CPU smoke): a 2-layer, width-32 version of the baseline.

Inputs are banks ``(P, G, M)`` (params, grads, momentum buffers; fp32, each ``(B, rows, cols)``).
``M`` starts at ``G / (1 - momentum)``, the fixed point of ``M <- momentum * M + G``, so repeated
timed calls keep orthogonalising the same matrices and any call can be checked against the
reference. Every contender returns the updates it applied (one ``(B, rows, cols)`` stack per bank,
scale correction included, in its compute dtype: bf16 on CUDA like the official code, fp32 on CPU).

Contenders:
  * ``official_loop``: matrix by matrix, eager (the official ``train_gpt.py`` algorithm; the 2-D call
    of ``newton_schulz_reference`` is that code, see tests/test_muon.py);
  * ``torch_compile_batched``: one batched torch Newton-Schulz per bank under ``torch.compile``;
  * ``pgolf_triton``: one ``triton_kernels.newton_schulz`` call per bank (symmetric Gram kernels);
  * ``modded_nanogpt_symmetric``: not run (see its reason).

FLOPs: the full mathematical count of Newton-Schulz, ``steps * (4 s^2 l + 2 s^3)`` per matrix with
``s = min(rows, cols)``, ``l = max``: ``X X^T`` (2 s^2 l), ``A A`` (2 s^3), ``B X`` (2 s^2 l). The
symmetric products are counted in full although the Triton kernels compute only their upper
triangles; the elementwise momentum/apply FLOPs are left out. Bytes: the compulsory traffic of the
update, read ``P, G, M`` and write ``P, M`` in fp32 (``20`` bytes per parameter); Newton-Schulz's own
intermediates stay out of the count.
"""
from __future__ import annotations

import functools

import torch

from benchmarks.harness import Benchmark, Case, Contender
from triton_kernels._dispatch import triton_unavailable
from triton_kernels.newton_schulz import newton_schulz, newton_schulz_reference

LR, MOMENTUM, STEPS = 0.04, 0.95, 5
Banks = list[tuple[int, int, int]]


def baseline_banks(*, layers: int = 9, dim: int = 512, heads: int = 8, kv_heads: int = 4, mlp_mult: int = 2) -> Banks:
    """(count, rows, cols) of the official model's matrices grouped by shape."""
    kv = dim * kv_heads // heads
    return [(2 * layers, dim, dim), (2 * layers, kv, dim), (layers, mlp_mult * dim, dim), (layers, dim, mlp_mult * dim)]


RECORD_BANKS: Banks = [(22, 512, 512), (22, 256, 512), (11, 2048, 512), (11, 512, 2048)]


def ns_flops(rows: int, cols: int, steps: int = STEPS) -> float:
    s, l = min(rows, cols), max(rows, cols)
    return float(steps * (4 * s * s * l + 2 * s**3))


def _case(name: str, banks: Banks) -> Case:
    def make_inputs(device: torch.device, seed: int) -> tuple:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out = []
        for count, rows, cols in banks:
            P = (0.02 * torch.randn(count, rows, cols, generator=gen)).to(device)
            G = torch.randn(count, rows, cols, generator=gen).to(device)
            out.append((P, G, G / (1 - MOMENTUM)))
        return (out,)

    return Case(name=name, make_inputs=make_inputs,
                flops=sum(c * ns_flops(r, k) for c, r, k in banks),
                bytes=float(sum(20 * c * r * k for c, r, k in banks)))


def cases(size: str) -> list[Case]:
    if size == "tiny":
        return [_case("baseline_tiny", baseline_banks(layers=2, dim=32))]
    return [_case("baseline", baseline_banks()), _case("record", RECORD_BANKS)]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if t.is_cuda else t.dtype


def _scale(rows: int, cols: int) -> float:
    return max(1.0, rows / cols) ** 0.5


def official_loop(banks) -> list[torch.Tensor]:
    updates = []
    for P, G, M in banks:
        U = torch.empty(P.shape, device=P.device, dtype=_compute_dtype(P))
        for i in range(P.shape[0]):
            M[i].mul_(MOMENTUM).add_(G[i])
            u = newton_schulz_reference(G[i].add(M[i], alpha=MOMENTUM).to(U.dtype), steps=STEPS)
            U[i] = u * _scale(*P.shape[1:])
            P[i].add_(U[i].to(P.dtype), alpha=-LR)
        updates.append(U)
    return updates


def _banked(banks, orthogonalise) -> list[torch.Tensor]:
    updates = []
    for P, G, M in banks:
        M.mul_(MOMENTUM).add_(G)
        U = orthogonalise(G.add(M, alpha=MOMENTUM).to(_compute_dtype(P)))
        scale = _scale(*P.shape[1:])
        if scale != 1.0:
            U = U * scale
        P.add_(U.to(P.dtype), alpha=-LR)
        updates.append(U)
    return updates


@functools.cache
def _compiled_reference():
    return torch.compile(functools.partial(newton_schulz_reference, steps=STEPS), dynamic=False)


def torch_compile_batched(banks) -> list[torch.Tensor]:
    return _banked(banks, _compiled_reference())


def pgolf_triton(banks) -> list[torch.Tensor]:
    return _banked(banks, functools.partial(newton_schulz, steps=STEPS, impl="triton"))


def reference(banks) -> list[torch.Tensor]:
    """The updates in fp32 from the (fixed-point) inputs, without touching them."""
    return [newton_schulz_reference(G.float() + MOMENTUM * (MOMENTUM * M.float() + G.float()), steps=STEPS)
            * _scale(*P.shape[1:]) for P, G, M in banks]


def check(out: list[torch.Tensor], ref: list[torch.Tensor]) -> str | None:
    """Relative Frobenius error per bank: bf16 Newton-Schulz is ~3% from fp32 on random input."""
    for i, (u, r) in enumerate(zip(out, ref)):
        if u.shape != r.shape:
            return f"bank {i}: shape {tuple(u.shape)} != {tuple(r.shape)}"
        tol = 8e-2 if u.dtype in (torch.bfloat16, torch.float16) else 1e-3
        err = ((u.float() - r).norm() / r.norm()).item()
        if not err <= tol:
            return f"bank {i} {tuple(u.shape)}: relative error {err:.3g} > {tol}"
    return None


def _modded_nanogpt_unavailable() -> str:
    return ("not run: modded-nanogpt's symmetric X X^T kernels live inside its training script, not in an "
            "installable package; running them here would mean copying its code")


BENCHMARK = Benchmark(
    name="newton_schulz",
    cases=cases,
    contenders=[
        Contender("official_loop", official_loop),
        Contender("torch_compile_batched", torch_compile_batched),
        Contender("pgolf_triton", pgolf_triton, unavailable=triton_unavailable),
        Contender("modded_nanogpt_symmetric", lambda banks: None, unavailable=_modded_nanogpt_unavailable),
    ],
    reference=reference,
    check=check,
    baseline="official_loop",
)
