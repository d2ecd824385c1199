"""Triton kernels of :mod:`triton_kernels.newton_schulz` (layer 1; imported lazily by its launcher).

The math (schedules, normalisation, why the Gram products are symmetric) is in that module's
docstring and ``triton_kernels/README.md``.

* ``_ns_sym_kernel``: ``out = alpha X X^T + beta C`` for symmetric ``C``, upper tiles only, each
  stored twice (at ``(i, j)`` and transposed at ``(j, i)``);
* ``_ns_update_kernel``: ``X' = a X + B X``, the ``a X`` term in the GEMM's epilogue.
"""
import triton
import triton.language as tl


@triton.jit
def _mm_tile(a_ptr, stride_am, stride_ak, b_ptr, stride_bk, stride_bn, offs_m, offs_n, M, N, K,
             PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # fp32 tile (A @ B)[offs_m, offs_n] of A: [M, K], B: [K, N]; out-of-range rows/cols read 0.
    offs_k = tl.arange(0, BK)  # [BK]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + offs_k
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=(offs_m[:, None] < M) & (kk[None, :] < K), other=0.0)  # [BM, BK]
        b = tl.load(b_ptr + kk[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=(kk[:, None] < K) & (offs_n[None, :] < N), other=0.0)  # [BK, BN]
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _ns_sym_kernel(x_ptr, c_ptr, out_ptr, M, K,
                   stride_xb, stride_xm, stride_xk,
                   stride_cb, stride_cm, stride_cn,
                   stride_ob, stride_om, stride_on,
                   alpha, beta,
                   HAS_C: tl.constexpr, PRECISION: tl.constexpr,
                   BM: tl.constexpr, BK: tl.constexpr):
    # out[b] = alpha * X[b] @ X[b]^T + beta * C[b]; X: [M, K], C and out: [M, M] symmetric.
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    if pid_j < pid_i:  # lower tiles are written by their mirror program
        return
    pid_b = tl.program_id(2).to(tl.int64)
    x_ptr += pid_b * stride_xb
    offs_i = pid_i * BM + tl.arange(0, BM)  # [BM]
    offs_j = pid_j * BM + tl.arange(0, BM)  # [BM]
    # X^T is X read with its two strides swapped
    acc = _mm_tile(x_ptr, stride_xm, stride_xk, x_ptr, stride_xk, stride_xm, offs_i, offs_j, M, M, K,
                   PRECISION, BM, BM, BK) * alpha  # [BM, BM]
    mask = (offs_i[:, None] < M) & (offs_j[None, :] < M)  # [BM, BM]
    if HAS_C:
        c = tl.load(c_ptr + pid_b * stride_cb + offs_i[:, None] * stride_cm + offs_j[None, :] * stride_cn,
                    mask=mask, other=0.0)  # [BM, BM]
        acc += beta * c.to(tl.float32)
    tile = acc.to(out_ptr.dtype.element_ty)  # [BM, BM]
    out_ptr += pid_b * stride_ob
    tl.store(out_ptr + offs_i[:, None] * stride_om + offs_j[None, :] * stride_on, tile, mask=mask)
    if pid_j != pid_i:
        tl.store(out_ptr + offs_j[:, None] * stride_om + offs_i[None, :] * stride_on, tl.trans(tile),
                 mask=(offs_j[:, None] < M) & (offs_i[None, :] < M))  # [BM, BM] mirrored


@triton.jit
def _ns_update_kernel(b_ptr, x_ptr, out_ptr, M, N,
                      stride_bb, stride_bm, stride_bk,
                      stride_xb, stride_xm, stride_xn,
                      stride_ob, stride_om, stride_on,
                      a_coef,
                      PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # out[b] = a * X[b] + B[b] @ X[b]; B: [M, M], X and out: [M, N].
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    x_ptr += pid_b * stride_xb
    offs_m = pid_m * BM + tl.arange(0, BM)  # [BM]
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    acc = _mm_tile(b_ptr + pid_b * stride_bb, stride_bm, stride_bk, x_ptr, stride_xm, stride_xn,
                   offs_m, offs_n, M, N, M, PRECISION, BM, BN, BK)  # [BM, BN]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)  # [BM, BN]
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn, mask=mask, other=0.0)
    acc += a_coef * x.to(tl.float32)
    tl.store(out_ptr + pid_b * stride_ob + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=mask)
