"""Triton kernel of the neural-cache target lookup (imported lazily by :mod:`.ops` on first launch).

The math is in the :mod:`triton_kernels.neural_cache` docstring. One program owns ``BQ`` queries
and one split (a contiguous range) of the keys, and streams over that range in ``BN``-key blocks,
flash-attention style, with two online log-sum-exps in float32: one over every visible key
(the denominator) and one over the visible keys whose label is the query's target (the
numerator), each with its own running maximum so neither underflows when the other dominates.
It writes per-split partials ``(log den, log num, count)``; the launcher combines the splits.
"""
import triton
import triton.language as tl


@triton.jit
def _online_lse(b_m, b_l, b_s):
    # one step of a running log-sum-exp: (max, sum of exp(s - max)) updated with the rows of b_s.
    # Rows that have seen nothing keep m = -inf; they are shifted by 0 instead (exp(-inf) = 0, never NaN).
    b_m_new = tl.maximum(b_m, tl.max(b_s, axis=1))  # [BQ]
    b_shift = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)  # [BQ]
    b_l = b_l * tl.exp(b_m - b_shift) + tl.sum(tl.exp(b_s - b_shift[:, None]), axis=1)  # [BQ]
    return b_m_new, b_l


@triton.jit
def _finish_lse(b_m, b_l):
    # max + log(sum); -inf (never NaN, no log(0)) for a row that saw nothing (m = -inf, l = 0)
    b_seen = b_l > 0
    return tl.where(b_seen, b_m + tl.log(tl.where(b_seen, b_l, 1.0)), float("-inf"))


@triton.jit
def _cache_lookup_fwd_kernel(q_ptr, k_ptr, lab_ptr, tgt_ptr, kseq_ptr, qseq_ptr, qscale_ptr,
                             den_ptr, num_ptr, cnt_ptr,
                             Q, N, D, keys_per_split, stride_q, stride_k,
                             COSINE: tl.constexpr, HAS_SEQ: tl.constexpr, PRECISION: tl.constexpr,
                             BQ: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    # partials of split i_s for queries [i_q*BQ, ...): den/num [S, Q] float32 (log space), cnt [S, Q] int32.
    i_q = tl.program_id(0)
    i_s = tl.program_id(1)
    o_q = i_q * BQ + tl.arange(0, BQ)  # [BQ]
    m_q = o_q < Q
    b_tgt = tl.load(tgt_ptr + o_q, mask=m_q, other=0).to(tl.int32)  # [BQ]
    b_scale = tl.load(qscale_ptr + o_q, mask=m_q, other=0.0)  # [BQ] theta (or theta / |q|)
    if HAS_SEQ:
        b_qseq = tl.load(qseq_ptr + o_q, mask=m_q, other=0).to(tl.int32)  # [BQ]
    n_start = i_s.to(tl.int64) * keys_per_split
    n_end = tl.minimum(n_start + keys_per_split, N)
    b_m_den = tl.full([BQ], float("-inf"), tl.float32)
    b_l_den = tl.zeros([BQ], tl.float32)
    b_m_num = tl.full([BQ], float("-inf"), tl.float32)
    b_l_num = tl.zeros([BQ], tl.float32)
    b_cnt = tl.zeros([BQ], tl.int32)
    for i_n in range(n_start, n_end, BN):
        o_n = i_n + tl.arange(0, BN).to(tl.int64)  # [BN]
        m_n = o_n < n_end
        b_dot = tl.zeros([BQ, BN], tl.float32)
        b_kk = tl.zeros([BN], tl.float32)
        for i_d in range(0, D, BD):
            o_d = i_d + tl.arange(0, BD)  # [BD]
            m_d = o_d < D
            b_q = tl.load(q_ptr + o_q[:, None].to(tl.int64) * stride_q + o_d[None, :],
                          mask=m_q[:, None] & m_d[None, :], other=0.0)  # [BQ, BD]
            b_k = tl.load(k_ptr + o_n[:, None] * stride_k + o_d[None, :],
                          mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
            b_dot = tl.dot(b_q, tl.trans(b_k), b_dot, input_precision=PRECISION)  # [BQ, BN]
            if COSINE:
                b_kf = b_k.to(tl.float32)
                b_kk += tl.sum(b_kf * b_kf, axis=1)
        b_s = b_dot * b_scale[:, None]  # [BQ, BN]
        if COSINE:
            b_s = b_s / tl.maximum(tl.sqrt(b_kk), 1e-12)[None, :]
        b_vis = m_q[:, None] & m_n[None, :]  # [BQ, BN]
        if HAS_SEQ:
            b_kseq = tl.load(kseq_ptr + o_n, mask=m_n, other=0).to(tl.int32)  # [BN]
            b_vis = b_vis & (b_kseq[None, :] < b_qseq[:, None])
        b_lab = tl.load(lab_ptr + o_n, mask=m_n, other=0).to(tl.int32)  # [BN]
        b_s = tl.where(b_vis, b_s, float("-inf"))
        b_cnt += tl.sum(b_vis.to(tl.int32), axis=1)
        b_m_den, b_l_den = _online_lse(b_m_den, b_l_den, b_s)
        b_s = tl.where(b_lab[None, :] == b_tgt[:, None], b_s, float("-inf"))
        b_m_num, b_l_num = _online_lse(b_m_num, b_l_num, b_s)
    b_den = _finish_lse(b_m_den, b_l_den)  # [BQ]
    b_num = _finish_lse(b_m_num, b_l_num)  # [BQ]
    o_out = i_s * Q + o_q
    tl.store(den_ptr + o_out, b_den, mask=m_q)
    tl.store(num_ptr + o_out, b_num, mask=m_q)
    tl.store(cnt_ptr + o_out, b_cnt, mask=m_q)
