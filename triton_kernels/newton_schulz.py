"""Newton-Schulz orthogonalisation of a stack of matrices (the inner loop of Muon).

Given a stack ``G`` of shape ``(B, m, n)`` (or one ``(m, n)`` matrix), each matrix is normalised
and pushed through ``T`` odd quintic polynomials acting on its singular values:

    X_0     = G / (s * ||G||_F + eps)                       per matrix, s = the schedule's safety factor
    A_t     = X_t X_t^T                                     (m x m, symmetric)
    B_t     = b_t A_t + c_t A_t A_t                         (m x m, symmetric)
    X_{t+1} = a_t X_t + B_t X_t  =  a_t X + b_t (X X^T) X + c_t (X X^T)^2 X

If ``G = U diag(sigma) V^T`` then ``X_T = U diag(f(sigma / ||G||_F)) V^T`` with
``f = p_T o ... o p_1`` and ``p_t(x) = a_t x + b_t x^3 + c_t x^5`` applied to ``x / s``: the iteration
keeps the singular vectors and maps every singular value towards 1, i.e. it approximates the
polar factor ``U V^T`` without an SVD. Since ``sigma_max <= ||G||_F`` every normalised singular value
starts in ``(0, 1]``.

Wide, not tall: for a tall matrix (``m > n``) we iterate on ``G^T`` and transpose back, so the Gram
matrix ``A`` is ``min(m, n)`` square. The result is the same (``polar(G^T) = polar(G)^T``) and a step
costs ``4 m^2 n + 2 m^3`` FLOPs with ``m = min``, against ``4 n^2 m + 2 n^3`` the other way round.

Schedules (``schedule=``), with the band each one guarantees after 5 steps. ``x = sigma/||G||_F`` is
an input singular value after normalisation; the bands are the exact range of the scalar map ``f``
over ``x in [floor, 1]``, computed in float64 and pinned (with a small margin) in
``tests/test_newton_schulz.py``. Below the floor ``f`` is increasing and ``f(x) >= 0.69 x``
(quintic) / ``0.86 x`` (Polar Express): tiny directions are amplified, never flipped or lost, but
they do not reach the band in 5 steps.

* ``"quintic"``: ``(a, b, c) = (3.4445, -4.7750, 2.0315)`` every step, ``s = 1`` (Keller Jordan's
  Muon, the official parameter-golf ``train_gpt.py``). 5 steps: ``x in [2e-3, 1] -> [0.682, 1.203]``,
  ``x in [1e-2, 1] -> [0.682, 1.135]``. It does not converge to 1; it trades accuracy for a steep
  slope at 0.
* ``"polar_express"``: Algorithm 1 of Amsel, Persson, Musco & Gower, "The Polar Express: Optimal
  Matrix Sign Methods and Their Application to the Muon Algorithm" (arXiv:2505.16932): eight
  minimax-optimal triples for ``[l, u] = [1e-3, 1]``, each of the first seven divided by
  ``(1.01, 1.01^3, 1.01^5)``, the last one ``(1.875, -1.25, 0.375)`` repeated for further steps, and
  ``s = 1.01`` (``X / (||X||_F * 1.01 + eps)``) so rounding cannot push ``x`` past 1.
  5 steps: ``x in [1e-3, 1] -> [0.840, 1.124]``.
* ``"polar_express_5"``: the five-step set from modded-nanogpt's ``train_gpt.py`` (generated with the
  paper's recipe for 5 iterations, 2% safety, cushion 2) with ``s = 1.02``.
  5 steps: ``x in [1e-3, 1] -> [0.846, 1.142]``.
* a sequence of ``(a, b, c)`` triples, ``s = 1``.

For every schedule step ``t`` uses triple ``t`` and the last triple repeats when ``steps`` exceeds
the list (``steps`` smaller than the list truncates it).

Precision: the input dtype is the compute dtype. Products accumulate in fp32 and are rounded to the
input dtype when stored (``A``, ``B`` and ``X`` each step), like ``torch.matmul`` on bf16 tensors in
the official code, which casts the gradient to bf16 first (Muon does that cast, not this op). fp32
input computes in fp32 (``input_precision="ieee"``, no TF32). The normalisation is computed in fp32.
The reference evaluates ``c * A @ A`` as ``(c * A) @ A`` like the official code (so bf16 rounds
identically); the Triton kernel forms ``c * (A A^T) + b * A`` in its fp32 accumulator, which rounds
once less. In bf16 the two differ by bf16 noise (each is ~3% from float64 on random inputs).

The Triton path launches two kernels per step on ``(B, m, n)``:

* ``_ns_sym_kernel``: ``out = alpha X X^T + beta C`` for symmetric ``C``; a program owns one
  ``BM x BM`` tile ``(i, j)`` with ``i <= j`` of the ``m x m`` result, computes it once and stores it
  at ``(i, j)`` and, transposed, at ``(j, i)`` -- half the FLOPs of a plain GEMM. It computes
  ``A = X X^T`` (``alpha=1, beta=0``) and ``B = c A A^T + b A`` (``A`` is symmetric, so
  ``A A = A A^T`` is again a Gram product).
* ``_ns_update_kernel``: ``X' = a X + B X``, the GEMM with the ``a X`` term fused into its epilogue.

It is CUDA-graph capturable: no host synchronisation, no ``.item()``, grids depend only on shapes,
and the buffers are allocated inside the call (they come from the graph's private pool during
capture). Compile once before capturing (Triton compiles on the first launch of a shape).
There is no autograd: this is an optimizer op.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ._dispatch import interpreter_enabled, resolve_impl

Coeffs = tuple[tuple[float, float, float], ...]

QUINTIC: Coeffs = ((3.4445, -4.7750, 2.0315),)

_POLAR_EXPRESS_RAW: Coeffs = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS: Coeffs = tuple(
    (a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]
) + _POLAR_EXPRESS_RAW[-1:]

POLAR_EXPRESS_5: Coeffs = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

SCHEDULES: dict[str, tuple[Coeffs, float]] = {
    "quintic": (QUINTIC, 1.0),
    "polar_express": (POLAR_EXPRESS, 1.01),
    "polar_express_5": (POLAR_EXPRESS_5, 1.02),
}

Schedule = str | Sequence[Sequence[float]]


def ns_coefficients(schedule: Schedule, steps: int) -> tuple[list[tuple[float, float, float]], float]:
    """The ``steps`` triples ``(a, b, c)`` and the normalisation safety factor of ``schedule``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; use one of {sorted(SCHEDULES)} or a list of (a, b, c)")
        table, safety = SCHEDULES[schedule]
    else:
        table = tuple(tuple(float(v) for v in t) for t in schedule)
        if not table or any(len(t) != 3 for t in table):
            raise ValueError(f"a custom schedule must be a non-empty list of (a, b, c) triples, got {schedule!r}")
        if not all(math.isfinite(v) for t in table for v in t):
            raise ValueError(f"a custom schedule's coefficients must be finite numbers, got {schedule!r}")
        safety = 1.0
    coeffs = [table[min(t, len(table) - 1)] for t in range(steps)]
    return coeffs, safety


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"newton_schulz expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"newton_schulz expects a (m, n) matrix or a (B, m, n) stack, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"newton_schulz expects a floating-point tensor, got {x.dtype}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"newton_schulz needs non-empty matrices, got shape {tuple(x.shape)}")


def _normalise(x: torch.Tensor, safety: float, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x / (safety * ||x||_F + eps)`` per matrix, the norm in fp32 (or wider), the result in ``x.dtype``."""
    acc = torch.promote_types(x.dtype, torch.float32)
    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True, dtype=acc)
    denom = (norm * safety + eps).to(x.dtype)
    return torch.div(x, denom, out=out)


def newton_schulz_reference(x: torch.Tensor, *, steps: int = 5, schedule: Schedule = "quintic",
                            eps: float = 1e-7) -> torch.Tensor:
    """Pure-torch Newton-Schulz (batched ``torch.matmul``); the test oracle and the CPU fallback.

    Same contract as :func:`newton_schulz`: computes in ``x.dtype`` (use float64 for an oracle).
    """
    _check_input(x)
    coeffs, safety = ns_coefficients(schedule, steps)
    tall = x.shape[-2] > x.shape[-1]
    X = _normalise(x.mT if tall else x, safety, eps)
    for a, b, c in coeffs:
        A = X @ X.mT
        B = b * A + c * A @ A  # (c * A) @ A: the official order, so bf16 rounds exactly like train_gpt.py
        X = a * X + B @ X
    return X.mT if tall else X


def _kernels():
    """``(sym kernel, update kernel)``, imported on first launch (never at package import)."""
    from . import _newton_schulz_kernels as k
    return k._ns_sym_kernel, k._ns_update_kernel


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _block(size: int, cap: int) -> int:
    """Power-of-two tile edge in [16, cap] covering ``size`` when it is small (tl.dot needs >= 16)."""
    return max(16, min(cap, 1 << max(0, size - 1).bit_length()))


def ns_tiles(m: int, n: int) -> dict[str, int]:
    """Tile edges for wide ``(m, n)`` matrices (``m <= n``), launched with Triton's default 4 warps
    and 3 stages. ``BM``: Gram / update row tile; ``BK_GRAM``: reduction over ``n`` in ``X X^T``;
    ``BK_SQ``: reduction over ``m`` in ``A A^T`` and ``B X``; ``BN``: update column tile. Untuned:
    they compile for sm_90 without spills (``tests/test_sm90_compile.py``); speed is unmeasured."""
    return dict(BM=_block(m, 64), BK_GRAM=_block(n, 64), BK_SQ=_block(m, 64), BN=_block(n, 128))


def newton_schulz_triton(x: torch.Tensor, *, coeffs: Sequence[tuple[float, float, float]],
                         safety: float = 1.0, eps: float = 1e-7) -> torch.Tensor:
    """Launch the Triton Newton-Schulz on a wide stack ``x`` of shape ``(B, m, n)``, ``m <= n``.

    Returns a new contiguous ``(B, m, n)`` tensor of ``x.dtype``; ``x`` may have any strides.
    """
    if x.dim() != 3:
        raise ValueError(f"newton_schulz_triton expects a (B, m, n) stack, got shape {tuple(x.shape)}")
    if x.dtype not in _TRITON_DTYPES:
        raise TypeError(f"newton_schulz_triton supports {[str(d) for d in _TRITON_DTYPES]}, got {x.dtype}")
    Bt, M, N = x.shape
    if M > N:
        raise ValueError(f"newton_schulz_triton expects wide matrices (m <= n), got {M}x{N}; transpose first")
    if not (x.is_cuda or (x.device.type == "cpu" and interpreter_enabled())):
        raise ValueError(f"newton_schulz_triton needs a CUDA tensor (or a CPU one under TRITON_INTERPRET=1), "
                         f"got {x.device}")
    if Bt > 65535:
        raise ValueError(f"newton_schulz_triton supports at most 65535 matrices per call, got {Bt}")
    if not coeffs:
        raise ValueError("newton_schulz_triton needs at least one (a, b, c) triple")
    sym_kernel, update_kernel = _kernels()
    X = _normalise(x, safety, eps, out=torch.empty((Bt, M, N), device=x.device, dtype=x.dtype))
    if Bt == 0:
        return X
    Y = torch.empty_like(X)
    A = torch.empty((Bt, M, M), device=x.device, dtype=x.dtype)
    Bm = torch.empty_like(A)
    precision = "ieee" if x.dtype == torch.float32 else None  # fp32 stays fp32 (no TF32)
    t = ns_tiles(M, N)
    bm, bk_gram, bk_sq, bn = t["BM"], t["BK_GRAM"], t["BK_SQ"], t["BN"]
    nt = -(-M // bm)
    sym_grid = (nt, nt, Bt)
    update_grid = (nt, -(-N // bn), Bt)
    for a, b, c in coeffs:
        sym_kernel[sym_grid](X, X, A, M, N, *X.stride(), 0, 0, 0, *A.stride(), 1.0, 0.0,
                             HAS_C=False, PRECISION=precision, BM=bm, BK=bk_gram)
        sym_kernel[sym_grid](A, A, Bm, M, M, *A.stride(), *A.stride(), *Bm.stride(), float(c), float(b),
                             HAS_C=True, PRECISION=precision, BM=bm, BK=bk_sq)
        update_kernel[update_grid](Bm, X, Y, M, N, *Bm.stride(), *X.stride(), *Y.stride(), float(a),
                                   PRECISION=precision, BM=bm, BN=bn, BK=bk_sq)
        X, Y = Y, X
    return X


def newton_schulz(x: torch.Tensor, *, steps: int = 5, schedule: Schedule = "quintic", impl: str = "auto",
                  eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise each matrix of ``x``: ``U S V^T -> U f(S) V^T`` with ``f(S) ~ 1``.

    Args:
        x: a ``(m, n)`` matrix or a ``(B, m, n)`` stack of same-shape matrices, tall or wide, any
            floating dtype (the Triton path: fp16, bf16, fp32), any strides. Computed in ``x.dtype``.
        steps: number of polynomial iterations.
        schedule: ``"quintic"``, ``"polar_express"``, ``"polar_express_5"`` or a list of
            ``(a, b, c)`` triples (see the module docstring for the math and each schedule's band).
        impl: ``"auto"`` (Triton on CUDA or under ``TRITON_INTERPRET=1``, else the reference),
            ``"triton"`` or ``"torch"``.
        eps: added to the scaled Frobenius norm before dividing (all-zero input gives zero output).

    Returns:
        A tensor of ``x``'s shape and dtype. For tall matrices it is a transposed view of a
        contiguous ``(B, n, m)`` buffer (``.contiguous()`` it if you need row-major).
    """
    _check_input(x)
    coeffs, safety = ns_coefficients(schedule, steps)
    if resolve_impl(impl, x) == "torch":
        return newton_schulz_reference(x, steps=steps, schedule=schedule, eps=eps)
    tall = x.shape[-2] > x.shape[-1]
    X = x.mT if tall else x
    out = newton_schulz_triton(X if X.dim() == 3 else X.unsqueeze(0), coeffs=coeffs, safety=safety, eps=eps)
    out = out if x.dim() == 3 else out.squeeze(0)
    return out.mT if tall else out
