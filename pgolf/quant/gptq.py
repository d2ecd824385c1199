"""GPTQ: round a weight matrix column by column, feeding each column's rounding error forward.

For a linear layer ``y = x W^T`` (``W``: rows x cols) and calibration inputs ``X`` (tokens x cols),
GPTQ minimises the layer's output error ``||(W - Q) X^T||_F^2 = tr((W - Q) H (W - Q)^T)`` with the
Hessian ``H = X^T X`` (cols x cols), one column at a time (Frantar et al., 2022):

1. dead columns (``H_jj = 0``: an input that is always zero) get ``H_jj = 1`` and their weights 0;
   relative damping ``H += damp * mean(diag H) * I`` makes ``H`` positive definite;
2. act-order: columns are visited by descending ``H_jj`` (the most active inputs first);
3. ``U`` = the upper Cholesky factor of ``H^-1``; for column ``j`` (visit order), with the row scales
   ``s`` (fixed before GPTQ starts; the same fp16 scales the artifact stores):
   ``q_j = clamp(round_half_even(w_j / s), -qmax, qmax)``, ``e_j = (w_j - q_j s) / U_jj``, and every
   later column ``k`` becomes ``w_k - e_j U_jk`` -- within a block of ``block`` columns at once, and
   for the columns after the block as one matrix product ``W[:, after] -= E_block U[block, after]``;
4. the codes are put back in the original column order.

With ``H = I`` every ``U_jk`` off the diagonal is 0, nothing is fed forward, and GPTQ equals
round-to-nearest with the same scales bit for bit (``tests/test_gptq.py``).
"""
from __future__ import annotations

import torch

from triton_kernels.fake_quant import qmax_for


class GPTQError(ValueError):
    """The Hessian cannot be used (wrong shape, non-finite, not positive definite after damping)."""


def _prepared_hessian(hessian: torch.Tensor, cols: int, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H damped, dead-column mask)`` in float64."""
    if hessian.shape != (cols, cols):
        raise GPTQError(f"Hessian has shape {tuple(hessian.shape)}, the weight has {cols} columns")
    h = hessian.detach().to("cpu", torch.float64).clone()
    if not torch.isfinite(h).all():
        raise GPTQError("Hessian holds non-finite values (NaN or inf activations during calibration)")
    if not damp > 0:
        raise GPTQError(f"damp must be > 0, got {damp}")
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    return h, dead


def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, bits: int, *,
               block: int = 128, damp: float = 0.01, act_order: bool = True) -> torch.Tensor:
    """int8 GPTQ codes (rows x cols, values in ``[-qmax, qmax]``) of ``weight`` for ``hessian`` and
    the fp16 row ``scale`` (see the module docstring). Runs on the CPU in float32 (the Cholesky
    factorisation in float64). Raises :class:`GPTQError` when ``hessian`` is unusable."""
    qmax = qmax_for(bits)
    if weight.ndim != 2 or 0 in weight.shape:
        raise GPTQError(f"weight must be a non-empty 2-D tensor, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if scale.shape != (rows,):
        raise GPTQError(f"scale has shape {tuple(scale.shape)}, expected ({rows},)")
    if block < 1:
        raise GPTQError(f"block must be >= 1, got {block}")
    h, dead = _prepared_hessian(hessian, cols, damp)
    w = weight.detach().to("cpu", torch.float32).clone()
    w[:, dead] = 0.0
    order = (torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order
             else torch.arange(cols))
    w, h = w[:, order], h[order][:, order]
    try:
        h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
        u = torch.linalg.cholesky(h_inv, upper=True).to(torch.float32)
    except torch.linalg.LinAlgError as e:
        raise GPTQError(f"Hessian is not positive definite after damping {damp}: {e}") from None
    s = scale.detach().to("cpu", torch.float32)
    codes = torch.empty(rows, cols, dtype=torch.int8)
    for i0 in range(0, cols, block):
        i1 = min(i0 + block, cols)
        w_blk, err = w[:, i0:i1].clone(), torch.zeros(rows, i1 - i0)
        u_blk = u[i0:i1, i0:i1]
        for j in range(i1 - i0):
            col = w_blk[:, j]
            q = torch.round(col / s).clamp(-qmax, qmax)
            codes[:, i0 + j] = q.to(torch.int8)
            e = (col - q * s) / u_blk[j, j]
            w_blk[:, j + 1:] -= e[:, None] * u_blk[j, j + 1:][None, :]
            err[:, j] = e
        w[:, i1:] -= err @ u[i0:i1, i1:]
    return codes[:, torch.argsort(order)]
