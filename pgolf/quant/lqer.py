"""LQER: a low-rank correction of the largest quantisation errors, stored quantised (RECORD_STACK.md C.4).

For a quantised matrix ``W`` (rows x cols) with dequantised ``Q``, the error ``E = W - Q`` has the SVD
``U S V^T``; its best rank-``r`` approximation is ``A B`` with ``A = U_r S_r`` (rows x r) and
``B = V_r^T`` (r x cols). The ``top_k`` matrices with the largest ``||E||_F`` get one, stored as two
more :class:`~pgolf.quant.qtensor.QTensor` entries of the artifact, ``<name>.lqer_a`` and ``<name>.lqer_b``,
on the record's two's-complement grids (``q in [-2^(b-1), 2^(b-1) - 1]``, ``s = max|x| / (2^(b-1) - 1/2)``
rounded to fp16, ``q = clamp(round_half_even(x / s))``; an all-zero group gets ``s = 0``, codes 0):

* ``A^T`` (r x rows): int2, ``q in [-2, 1]``, one scale for the whole matrix ``s_A = max|A| / 1.5``
  (stored once per row of ``A^T``, all r equal, because a QTensor has a scale per row);
* ``B`` (r x cols): int4, ``q in [-8, 7]``, one scale per group of 64 consecutive values of a row,
  ``max|group| / 7.5``, stored as a ``(r * cols / 64, 64)`` matrix; per row when ``cols`` is not a
  multiple of 64.

Loading adds ``(q_A s_A)^T (q_B s_B)`` to ``Q`` (:func:`lqer_correction`). A correction that would not
lower ``||W - Q||_F`` is not stored. Artifacts holding these entries are format version 4 (a reader that
predates LQER refuses them instead of misreading the model).
"""
from __future__ import annotations

from typing import MutableMapping

import torch

from pgolf.quant.qtensor import QTensor

A_BITS, B_BITS, B_GROUP = 2, 4, 64
LQER_SUFFIXES = (".lqer_a", ".lqer_b")


def _quantise(m: torch.Tensor, bits: int, *, per_matrix: bool) -> QTensor:
    """``m`` (float32, 2-D) on the two's-complement grid of ``bits`` with one fp16 scale per row, or the
    same scale on every row (``per_matrix``); see the module docstring."""
    top = 2 ** (bits - 1)
    peak = m.abs().amax().expand(m.shape[0]) if per_matrix else m.abs().amax(dim=1)
    scale = (peak / (top - 0.5)).to(torch.float16)
    wide = scale.float()[:, None]
    codes = torch.where(wide > 0, torch.round(m / torch.where(wide > 0, wide, 1.0)), 0.0).clamp(-top, top - 1)
    return QTensor(codes=codes.to(torch.int8), scale=scale, bits=bits, shape=tuple(m.shape), dtype=torch.float32)


def lqer_factors(error: torch.Tensor, rank: int) -> tuple[QTensor, QTensor]:
    """The quantised rank-``rank`` factors ``(A^T, B)`` of ``error`` (see the module docstring)."""
    rows, cols = error.shape
    if not 1 <= rank <= min(rows, cols):
        raise ValueError(f"LQER rank must be in 1..{min(rows, cols)} for a {rows}x{cols} matrix, got {rank}")
    u, s, vh = torch.linalg.svd(error.double(), full_matrices=False)
    a_t = (u[:, :rank] * s[:rank]).T.float().contiguous()  # [r, rows]
    b = vh[:rank].float().contiguous()  # [r, cols]
    if cols % B_GROUP == 0:
        b = b.reshape(-1, B_GROUP)
    return _quantise(a_t, A_BITS, per_matrix=True), _quantise(b, B_BITS, per_matrix=False)


def lqer_correction(a_t: QTensor, b: QTensor) -> torch.Tensor:
    """``A B`` in float32 from the stored factors (``b`` reshaped back to ``r`` rows)."""
    a_t_deq = a_t.dequantize().float()
    return a_t_deq.T @ b.dequantize().float().reshape(a_t_deq.shape[0], -1)


def apply_lqer(entries: MutableMapping[str, object], state: dict[str, torch.Tensor], *, top_k: int,
               rank: int) -> list[str]:
    """Add ``<name>.lqer_a`` / ``.lqer_b`` to ``entries`` for the ``top_k`` quantised matrices with the
    largest ``||W - Q||_F`` (``W`` from ``state``), where the correction lowers that error. Returns the
    names corrected."""
    errors = {name: state[name].detach().float().cpu() - e.dequantize().float()
              for name, e in entries.items() if isinstance(e, QTensor) and name in state}
    ranked = sorted(errors, key=lambda n: -float(torch.linalg.norm(errors[n])))[:top_k]
    corrected = []
    for name in ranked:
        a_t, b = lqer_factors(errors[name], rank)
        if torch.linalg.norm(errors[name] - lqer_correction(a_t, b)) < torch.linalg.norm(errors[name]):
            entries[f"{name}.lqer_a"], entries[f"{name}.lqer_b"] = a_t, b
            corrected.append(name)
    return corrected
