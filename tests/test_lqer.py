"""LQER factors on the record's grids (RECORD_STACK.md C.4), checked against numpy written from that text."""
import numpy as np
import pytest
import torch

from pgolf.quant.lqer import lqer_correction, lqer_factors


def record_grid(x: np.ndarray, bits: int, peak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C.4: ``s = max|x| / (2^(b-1) - 0.5)`` as fp16, ``q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1)``."""
    top = 2 ** (bits - 1)
    scale = (peak / (top - 0.5)).astype(np.float16)
    q = np.clip(np.round(x / scale.astype(np.float32)[:, None]), -top, top - 1)
    return q.astype(np.int8), scale


@pytest.mark.parametrize("rows,cols,rank", [(48, 128, 4), (96, 64, 3), (40, 100, 4)])
def test_factors_use_the_record_grids(rows, cols, rank):
    error = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows + cols))
    a_t, b = lqer_factors(error, rank)
    u, s, vh = (t.numpy() for t in torch.linalg.svd(error.double(), full_matrices=False))  # the signs LQER sees
    a = (u[:, :rank] * s[:rank]).T.astype(np.float32)  # A^T, [r, rows]
    qa, sa = record_grid(a, 2, np.full(rank, np.abs(a).max(), dtype=np.float32))
    assert np.array_equal(a_t.codes.numpy(), qa) and np.array_equal(a_t.scale.numpy(), sa)
    assert a_t.bits == 2 and a_t.codes.min() >= -2 and a_t.codes.max() <= 1
    assert (a_t.codes.min() == -2) == (a.flat[np.abs(a).argmax()] < 0)  # -1.5 rounds to -2, +1.5 clamps to 1
    bm = vh[:rank].astype(np.float32)
    bm = bm.reshape(-1, 64) if cols % 64 == 0 else bm  # groups of 64 values of a row
    qb, sb = record_grid(bm, 4, np.abs(bm).max(axis=1))
    assert np.array_equal(b.codes.numpy(), qb) and np.array_equal(b.scale.numpy(), sb)
    assert b.bits == 4 and b.codes.min() >= -8 and b.codes.max() <= 7
    expected = (qa * sa.astype(np.float32)[:, None]).T @ (qb * sb.astype(np.float32)[:, None]).reshape(rank, cols)
    assert np.allclose(lqer_correction(a_t, b).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_an_all_zero_group_gets_zero_codes_not_nan():
    error = torch.zeros(8, 128)
    error[:, :64] = torch.randn(8, 64)  # every row's second group of B is zero
    a_t, b = lqer_factors(error, 2)
    assert torch.isfinite(lqer_correction(a_t, b)).all()
    assert (b.scale == 0).any() and (b.codes[b.scale == 0] == 0).all()
