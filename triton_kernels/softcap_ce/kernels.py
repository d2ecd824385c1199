"""Triton kernels of :mod:`triton_kernels.softcap_ce` (imported lazily by ``ops.py`` on first launch).

Both kernels run one program per row of ``logits [N, V]`` and stream over its columns in blocks of
``BLOCK_V``. Inside them a logit is carried as ``w = z - K`` with ``K = c`` under a softcap (so
``w = -2c sigmoid(-2l/c)`` lies in ``[-2c, 0]``) and ``K = 0`` without one (``w = l``); the math is in
the package docstring.
"""
import triton
import triton.language as tl

FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _softcap_shifted(b_l, softcap):
    # w = c tanh(l/c) - c = -2c sigmoid(-u) and dz/dl = 1 - tanh(l/c)^2 = 4e / (1 + e)^2, u = 2l/c, e = exp(-|u|);
    # neither overflows for any finite l (|l| = 1e4 gives e = 0: w = 0 or -2c, dz/dl = 0)
    b_u = b_l * (2.0 / softcap)
    b_e = tl.exp(-tl.abs(b_u))
    b_r = 1.0 / (1.0 + b_e)
    b_w = -2.0 * softcap * tl.where(b_u >= 0, b_e * b_r, b_r)
    return b_w, 4.0 * b_e * b_r * b_r


@triton.jit
def _shifted(b_l, softcap, SOFTCAP: tl.constexpr):
    if SOFTCAP:
        b_w, _ = _softcap_shifted(b_l, softcap)
    else:
        b_w = b_l
    return b_w


@triton.jit
def _softcap_ce_fwd_kernel(l_ptr, y_ptr, loss_ptr, lse_ptr, V, stride_l, softcap, ignore_index,
                           SOFTCAP: tl.constexpr, FIXED_MAX: tl.constexpr, BLOCK_V: tl.constexpr):
    # row n of l[N, V]: lse[n] = K + log sum_j exp(w_j), loss[n] = lse[n] - z[n, y[n]] (0 if ignored, NaN if out of range)
    i_n = tl.program_id(0)
    p_row = l_ptr + i_n.to(tl.int64) * stride_l
    o_v = tl.arange(0, BLOCK_V)                                                   # [BV]
    if FIXED_MAX:
        # w <= 0 and exp(w) >= exp(-2c) is a normal float32 for c <= 40: sum exp(w) with no running max
        b_acc = tl.zeros([BLOCK_V], dtype=tl.float32)                             # [BV]
        for i_v in range(tl.cdiv(V, BLOCK_V)):
            o_col = i_v * BLOCK_V + o_v
            m_col = o_col < V
            b_w = _shifted(tl.load(p_row + o_col, mask=m_col, other=0.0).to(tl.float32), softcap, SOFTCAP)
            b_acc += tl.where(m_col, tl.exp(b_w), 0.0)
        b_m = 0.0
        b_s = tl.sum(b_acc, axis=0)
    else:
        b_m = tl.full([], -FLT_MAX, tl.float32)                                  # running max of w
        b_s = tl.zeros([], dtype=tl.float32)                                      # running sum of exp(w - b_m)
        for i_v in range(tl.cdiv(V, BLOCK_V)):
            o_col = i_v * BLOCK_V + o_v
            m_col = o_col < V
            b_w = _shifted(tl.load(p_row + o_col, mask=m_col, other=0.0).to(tl.float32), softcap, SOFTCAP)
            b_w = tl.where(m_col, b_w, float("-inf"))                            # [BV]
            b_m_new = tl.maximum(b_m, tl.max(b_w, axis=0))
            b_s = b_s * tl.exp(b_m - b_m_new) + tl.sum(tl.exp(b_w - b_m_new), axis=0)
            b_m = b_m_new
    b_lse_w = b_m + tl.log(b_s)                                                   # lse - K
    b_y = tl.load(y_ptr + i_n)
    m_valid = b_y != ignore_index
    m_in = (b_y >= 0) & (b_y < V)
    b_w_y = _shifted(tl.load(p_row + b_y, mask=m_valid & m_in, other=0.0).to(tl.float32), softcap, SOFTCAP)
    b_loss = tl.where(m_in, b_lse_w - b_w_y, float("nan"))
    tl.store(loss_ptr + i_n, tl.where(m_valid, b_loss, 0.0))
    if SOFTCAP:
        b_lse_w += softcap
    tl.store(lse_ptr + i_n, b_lse_w)


@triton.jit
def _softcap_ce_bwd_kernel(l_ptr, y_ptr, lse_ptr, dloss_ptr, dlse_ptr, dl_ptr, V, stride_l, stride_dl, softcap,
                           ignore_index, SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr):
    # row n: dl[n, j] = ((g + h) p_j - g 1[j = y]) dz_j/dl_j, p = softmax(z), g = dloss[n] (0 unless y is a
    # class), h = dlse[n]; p_j = exp(w_j - (lse - K)) recomputed from the raw logits
    i_n = tl.program_id(0)
    p_row = l_ptr + i_n.to(tl.int64) * stride_l
    p_drow = dl_ptr + i_n.to(tl.int64) * stride_dl
    o_v = tl.arange(0, BLOCK_V)                                                   # [BV]
    b_y = tl.load(y_ptr + i_n)
    m_target = (b_y != ignore_index) & (b_y >= 0) & (b_y < V)
    b_g = tl.where(m_target, tl.load(dloss_ptr + i_n), 0.0)
    b_gp = b_g + tl.load(dlse_ptr + i_n)
    b_lse_w = tl.load(lse_ptr + i_n)
    if SOFTCAP:
        b_lse_w -= softcap
    for i_v in range(tl.cdiv(V, BLOCK_V)):
        o_col = i_v * BLOCK_V + o_v
        m_col = o_col < V
        b_l = tl.load(p_row + o_col, mask=m_col, other=0.0).to(tl.float32)      # [BV]
        if SOFTCAP:
            b_w, b_dz = _softcap_shifted(b_l, softcap)
        else:
            b_w = b_l
        b_d = b_gp * tl.exp(b_w - b_lse_w) - tl.where(o_col == b_y, b_g, 0.0)   # [BV] dloss/dz
        if SOFTCAP:
            b_d = b_d * b_dz
        tl.store(p_drow + o_col, b_d.to(dl_ptr.dtype.element_ty), mask=m_col)
