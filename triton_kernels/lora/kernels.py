"""Triton kernels of :mod:`triton_kernels.lora` (imported lazily by its launchers in ``ops.py``).

The math is in ``triton_kernels/lora/__init__.py`` and ``triton_kernels/README.md``.

* ``_lora_shrink_expand_kernel``: ``out_b = base_b + s * mid_b V_b`` with ``mid_b = m_b * (P_b U_b)``, the
  rank-``r`` ``mid`` kept in registers (optionally stored). Forward: ``P = x, U = A^T, V = B^T``;
  backward ``dX``: ``P = dY, U = B, V = A``; ``h = x A^T`` alone (``EXPAND=False``).
* ``_lora_grad_kernel``: ``dA_b = s g_b^T x_b`` and ``dB_b = s dY_b^T h_b`` in one launch, each a sum
  over the document's valid tokens only.
* ``_lora_adamw_kernel``: the beta1 = 0 AdamW update of a ``(D, N)`` parameter block, per-document step.
* ``_lora_reset_kernel``: zero B, v and the step of selected documents (A kept or overwritten).
"""
import triton
import triton.language as tl


@triton.jit
def _valid_length(len_ptr, i_b, T, HAS_LEN: tl.constexpr):
    # number of valid positions of document i_b: min(max(lengths[b], 0), T)
    if HAS_LEN:
        return tl.minimum(tl.maximum(tl.load(len_ptr + i_b).to(tl.int32), 0), T)
    return T


@triton.jit
def _lora_shrink_expand_kernel(p_ptr, u_ptr, v_ptr, base_ptr, out_ptr, mid_ptr, len_ptr,
                               T, K, R, N,
                               s_pb, s_pt, s_pk,
                               s_ub, s_uk, s_ur,
                               s_vb, s_vr, s_vn,
                               s_ob, s_ot, s_on,
                               s_mb, s_mt, s_mr,
                               scale,
                               HAS_BASE: tl.constexpr, HAS_LEN: tl.constexpr, STORE_MID: tl.constexpr,
                               EXPAND: tl.constexpr, PRECISION: tl.constexpr,
                               BT: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    # P: [D, T, K], U: [D, K, R], V: [D, R, N], base and out: [D, T, N] (same strides), mid: [D, T, R].
    # Program (i_t, i_b, i_s): rows i_t*BT.. of document i_b; output column tiles i_s, i_s + n_s, ...
    i_t, i_b, i_s = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    n_s = tl.num_programs(2)
    length = _valid_length(len_ptr, i_b, T, HAS_LEN)
    active = i_t * BT < length  # some row of this tile is a valid position
    o_t = i_t * BT + tl.arange(0, BT)  # [BT]
    o_r = tl.arange(0, BR)  # [BR]
    m_valid = o_t < length  # [BT]
    m_r = o_r < R  # [BR]
    dt = p_ptr.dtype.element_ty
    b_mid = tl.zeros((BT, BR), dtype=tl.float32)
    if active:
        for k0 in range(0, K, BK):
            o_k = k0 + tl.arange(0, BK)  # [BK]
            m_k = o_k < K
            b_p = tl.load(p_ptr + i_b * s_pb + o_t[:, None] * s_pt + o_k[None, :] * s_pk,
                          mask=m_valid[:, None] & m_k[None, :], other=0.0)  # [BT, BK]
            b_u = tl.load(u_ptr + i_b * s_ub + o_k[:, None] * s_uk + o_r[None, :] * s_ur,
                          mask=m_k[:, None] & m_r[None, :], other=0.0).to(dt)  # [BK, BR]
            b_mid = tl.dot(b_p, b_u, b_mid, input_precision=PRECISION)
    b_mid16 = b_mid.to(dt)  # [BT, BR] rounded to the compute dtype, as a bf16 matmul output would be
    if STORE_MID:
        if i_s == 0:
            tl.store(mid_ptr + i_b * s_mb + o_t[:, None] * s_mt + o_r[None, :] * s_mr, b_mid16,
                     mask=(o_t < T)[:, None] & m_r[None, :])
    if EXPAND:
        for n0 in range(i_s * BN, N, n_s * BN):
            o_n = n0 + tl.arange(0, BN)  # [BN]
            m_n = o_n < N
            b_out = tl.zeros((BT, BN), dtype=tl.float32)
            if active:
                b_v = tl.load(v_ptr + i_b * s_vb + o_r[:, None] * s_vr + o_n[None, :] * s_vn,
                              mask=m_r[:, None] & m_n[None, :], other=0.0).to(dt)  # [BR, BN]
                b_out = tl.dot(b_mid16, b_v, b_out, input_precision=PRECISION) * scale
            o_out = i_b * s_ob + o_t[:, None] * s_ot + o_n[None, :] * s_on  # [BT, BN]
            m_out = (o_t < T)[:, None] & m_n[None, :]
            if HAS_BASE:
                b_out += tl.load(base_ptr + o_out, mask=m_out, other=0.0).to(tl.float32)
            tl.store(out_ptr + o_out, b_out.to(out_ptr.dtype.element_ty), mask=m_out)


@triton.jit
def _tn_tile(p_ptr, q_ptr, c_ptr, length, M, N, o_m, o_n,
             s_pt, s_pm, s_qt, s_qn, s_cm, s_cn, scale,
             PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr):
    # c[o_m, o_n] = scale * sum_{t < length} p[t, o_m] q[t, o_n]; P: [T, M], Q: [T, N] (one document)
    m_m = o_m < M  # [BM]
    m_n = o_n < N  # [BN]
    b_c = tl.zeros((BM, BN), dtype=tl.float32)
    for t0 in range(0, length, BT):
        o_t = t0 + tl.arange(0, BT)  # [BT]
        m_t = o_t < length
        b_pt = tl.load(p_ptr + o_m[:, None] * s_pm + o_t[None, :] * s_pt,
                       mask=m_m[:, None] & m_t[None, :], other=0.0)  # [BM, BT] = P^T tile
        b_q = tl.load(q_ptr + o_t[:, None] * s_qt + o_n[None, :] * s_qn,
                      mask=m_t[:, None] & m_n[None, :], other=0.0)  # [BT, BN]
        b_c = tl.dot(b_pt, b_q, b_c, input_precision=PRECISION)
    tl.store(c_ptr + o_m[:, None] * s_cm + o_n[None, :] * s_cn, (b_c * scale).to(c_ptr.dtype.element_ty),
             mask=m_m[:, None] & m_n[None, :])


@triton.jit
def _lora_grad_kernel(g_ptr, x_ptr, dy_ptr, h_ptr, da_ptr, db_ptr, len_ptr,
                      T, K, R, N, N_A_TILES,
                      s_gb, s_gt, s_gr,
                      s_xb, s_xt, s_xk,
                      s_yb, s_yt, s_yn,
                      s_hb, s_ht, s_hr,
                      s_ab, s_ar, s_ak,
                      s_bb, s_bn, s_br,
                      scale,
                      HAS_LEN: tl.constexpr, PRECISION: tl.constexpr,
                      BT: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr):
    # g, h: [D, T, R]; x: [D, T, K]; dy: [D, T, N]; dA: [D, R, K]; dB: [D, N, R].
    # Programs 0..N_A_TILES-1 of axis 0 write dA[b][:, tile] = s g^T x, the others dB[b][tile, :] = s dy^T h.
    pid, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    length = _valid_length(len_ptr, i_b, T, HAS_LEN)
    o_r = tl.arange(0, BR)  # [BR]
    if pid < N_A_TILES:
        o_k = pid * BN + tl.arange(0, BN)  # [BN]
        _tn_tile(g_ptr + i_b * s_gb, x_ptr + i_b * s_xb, da_ptr + i_b * s_ab, length, R, K, o_r, o_k,
                 s_gt, s_gr, s_xt, s_xk, s_ar, s_ak, scale, PRECISION, BR, BN, BT)
    else:
        o_n = (pid - N_A_TILES) * BN + tl.arange(0, BN)  # [BN]
        _tn_tile(dy_ptr + i_b * s_yb, h_ptr + i_b * s_hb, db_ptr + i_b * s_bb, length, N, R, o_n, o_r,
                 s_yt, s_yn, s_ht, s_hr, s_bn, s_br, scale, PRECISION, BN, BR, BT)


@triton.jit
def _lora_adamw_kernel(p_ptr, g_ptr, v_ptr, step_ptr, log_beta2_ptr, N, s_p, s_g, s_v,
                       lr, beta2, one_minus_beta2, decay, eps, BLOCK: tl.constexpr):
    # one (D, N) block, program (i_c, i_b): columns i_c*BLOCK.. of document i_b; step[b] already counts this step
    i_c, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t = tl.load(step_ptr + i_b).to(tl.float64)
    bc2_sqrt = tl.sqrt_rn((1.0 - tl.exp(t * tl.load(log_beta2_ptr))).to(tl.float32))  # sqrt(1 - beta2^t)
    o = i_c * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    m = o < N
    b_p = tl.load(p_ptr + i_b * s_p + o, mask=m, other=0.0).to(tl.float32)
    b_g = tl.load(g_ptr + i_b * s_g + o, mask=m, other=0.0).to(tl.float32)
    b_v = tl.load(v_ptr + i_b * s_v + o, mask=m, other=0.0)
    b_p = b_p * decay
    b_v = b_v * beta2 + one_minus_beta2 * (b_g * b_g)
    b_p = b_p - lr * tl.math.div_rn(b_g, tl.math.div_rn(tl.sqrt_rn(b_v), bc2_sqrt) + eps)
    tl.store(p_ptr + i_b * s_p + o, b_p.to(p_ptr.dtype.element_ty), mask=m)
    tl.store(v_ptr + i_b * s_v + o, b_v, mask=m)


@triton.jit
def _lora_reset_kernel(p_ptr, v_ptr, step_ptr, docs_ptr, init_ptr, N, KEEP, s_p, s_v, s_i,
                       HAS_INIT: tl.constexpr, BLOCK: tl.constexpr):
    # documents with docs[b] != 0: p[b, KEEP:] = 0, p[b, :KEEP] = init[b] (if HAS_INIT), v[b] = 0, step[b] = 0
    i_c, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    if tl.load(docs_ptr + i_b) != 0:
        o = i_c * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
        m = o < N
        tl.store(v_ptr + i_b * s_v + o, tl.zeros((BLOCK,), dtype=v_ptr.dtype.element_ty), mask=m)
        b_p = tl.zeros((BLOCK,), dtype=p_ptr.dtype.element_ty)
        m_p = m & (o >= KEEP)
        if HAS_INIT:
            b_p = tl.where(o < KEEP, tl.load(init_ptr + i_b * s_i + o, mask=o < KEEP, other=0.0).to(b_p.dtype), b_p)
            m_p = m
        tl.store(p_ptr + i_b * s_p + o, b_p, mask=m_p)
        if i_c == 0:
            tl.store(step_ptr + i_b, tl.zeros((), dtype=step_ptr.dtype.element_ty))
