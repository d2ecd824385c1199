"""Triton kernels of :mod:`triton_kernels.fake_quant` (layer 1; imported lazily by its launchers).

The math (scale rules, rounding, clip mask, soft-round slope) is documented in
``triton_kernels/fake_quant.py``; these kernels compute exactly what its torch reference computes.

* ``_fq_weight_kernel``: row scales and the fake-quantised weight in one launch (one program per
  row), written in the matmul dtype;
* ``_fq_linear_dw_kernel``: ``dW = g(W) * (dy^T x)``, the clip mask / soft-round slope ``g``
  applied in the GEMM's epilogue.
"""
import triton
import triton.language as tl

RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: (x + M) - M rounds float32 x half to even, |x| < 2**22
MIN_SCALE = tl.constexpr(2.0 ** -14)  # smallest normal float16; fake_quant.MIN_SCALE
FP16_MAX = tl.constexpr(65504.0)


@triton.jit
def _rne(x):
    return (x + RNE_MAGIC) - RNE_MAGIC


@triton.jit
def _fq_weight_kernel(w_ptr, s_in_ptr, act_ptr, s_ptr, wq_ptr, K, stride_w, stride_wq, sigma,
                      QMAX: tl.constexpr, RULE: tl.constexpr, WRITE_WQ: tl.constexpr, BLOCK: tl.constexpr):
    # one program per row r of W[N, K]: s[r] by RULE (0: given in s_in, 1: maxabs, 2: sigma), then,
    # if WRITE_WQ, wq[r, :] = where(act, fq(W[r, :]), W[r, :]) cast to W's dtype, then to wq's dtype
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)                                            # [BLOCK]
    base = w_ptr + row.to(tl.int64) * stride_w
    if RULE == 0:
        scale = tl.load(s_in_ptr + row).to(tl.float32)
    else:
        bad = tl.zeros([BLOCK], dtype=tl.int32)                           # [BLOCK] non-finite seen
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            v = tl.load(base + k, mask=k < K, other=0.0).to(tl.float32)
            bad |= ((v != v) | (tl.abs(v) == float("inf"))).to(tl.int32)
        if RULE == 2:
            acc = tl.zeros([BLOCK], dtype=tl.float64)
            for k0 in range(0, K, BLOCK):
                k = k0 + offs
                acc += tl.load(base + k, mask=k < K, other=0.0).to(tl.float64)
            mean = tl.sum(acc, axis=0) / K
            acc2 = tl.zeros([BLOCK], dtype=tl.float64)
            for k0 in range(0, K, BLOCK):
                k = k0 + offs
                d = tl.where(k < K, tl.load(base + k, mask=k < K, other=0.0).to(tl.float64) - mean, 0.0)
                acc2 += d * d
            std = tl.sqrt(tl.sum(acc2, axis=0) / K).to(tl.float32)
            clip = std * sigma
        else:
            m = tl.zeros([BLOCK], dtype=tl.float32)
            for k0 in range(0, K, BLOCK):
                k = k0 + offs
                m = tl.maximum(m, tl.abs(tl.load(base + k, mask=k < K, other=0.0).to(tl.float32)))
            clip = tl.max(m, axis=0)
        scale = tl.math.div_rn(clip, tl.full([], QMAX, tl.float32))
        scale = tl.minimum(tl.maximum(scale, MIN_SCALE), FP16_MAX).to(tl.float16).to(tl.float32)
        scale = tl.where(tl.max(bad, axis=0) != 0, float("nan"), scale)  # a non-finite row: NaN scale
    tl.store(s_ptr + row, scale.to(tl.float16))
    if WRITE_WQ:
        act = tl.load(act_ptr) != 0
        out = wq_ptr + row.to(tl.int64) * stride_wq
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            w = tl.load(base + k, mask=k < K, other=0.0)                  # [BLOCK] W's dtype
            w32 = w.to(tl.float32)
            q = _rne(tl.minimum(tl.maximum(tl.math.div_rn(w32, scale), -QMAX), QMAX)) * scale
            q = tl.where(act, q, w32)                                      # [BLOCK] float32
            tl.store(out + k, q.to(w.dtype).to(wq_ptr.dtype.element_ty), mask=k < K)


@triton.jit
def _fq_linear_dw_kernel(dy_ptr, x_ptr, w_ptr, s_ptr, act_ptr, t_ptr, dw_ptr, M, N, K, m_per_split,
                         stride_dym, stride_xm, stride_wn, stride_dws, stride_dwn,
                         QMAX: tl.constexpr, SOFT: tl.constexpr, PREC: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # dW[N, K] (split over M: one partial per program_id(2)) = g(W) * (dy^T x)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)                        # [BN]
    rk = tl.program_id(1) * BK + tl.arange(0, BK)                        # [BK]
    split = tl.program_id(2)
    rm = tl.arange(0, BM)                                                 # [BM]
    acc = tl.zeros((BN, BK), dtype=tl.float32)                            # [BN, BK]
    m_lo = split * m_per_split
    m_hi = tl.minimum(m_lo + m_per_split, M)
    for m0 in range(m_lo, m_hi, BM):
        m = m0 + rm
        dyt = tl.load(dy_ptr + m[None, :].to(tl.int64) * stride_dym + rn[:, None],
                      mask=(m[None, :] < m_hi) & (rn[:, None] < N), other=0.0)                 # [BN, BM]
        x = tl.load(x_ptr + m[:, None].to(tl.int64) * stride_xm + rk[None, :],
                    mask=(m[:, None] < m_hi) & (rk[None, :] < K), other=0.0)                   # [BM, BK]
        acc = tl.dot(dyt, x, acc, input_precision=PREC)                                         # [BN, BK]
    tile = (rn[:, None] < N) & (rk[None, :] < K)
    w = tl.load(w_ptr + rn[:, None].to(tl.int64) * stride_wn + rk[None, :], mask=tile, other=0.0)
    s = tl.load(s_ptr + rn, mask=rn < N, other=1.0).to(tl.float32)                             # [BN]
    xs = tl.math.div_rn(w.to(tl.float32), s[:, None])                                           # [BN, BK]
    passes = tl.abs(_rne(tl.minimum(tl.maximum(xs, -QMAX - 1.0), QMAX + 1.0))) <= QMAX
    g = passes.to(tl.float32)
    if SOFT:
        a = 1.0 / tl.load(t_ptr).to(tl.float32)
        z = tl.abs(a * (xs - tl.floor(xs) - 0.5))
        e = tl.exp(-2.0 * z)
        sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e))                         # 1 - tanh(z)^2, stable
        ea = tl.exp(-a)
        g = g * (a * sech2 * (1.0 + ea) / (2.0 * (1.0 - ea)))              # / (2 tanh(a/2))
    g = tl.where(tl.load(act_ptr) != 0, g, 1.0)
    dw = dw_ptr + split.to(tl.int64) * stride_dws + rn[:, None].to(tl.int64) * stride_dwn + rk[None, :]
    tl.store(dw, (acc * g).to(dw_ptr.dtype.element_ty), mask=tile)
