"""The neural-cache target lookup: ``log p_cache(target)`` for a chunk of queries against a cache of keys.

Cases ("full", for a GPU): 2,048 queries (one scored chunk), hidden size 512, bf16 states,
vocabulary 8,192, ``theta = 0.05`` on dot products, every key visible (the engine's per-chunk use:
the cache holds only chunks scored before), N = 2,048 / 32,768 / 1,048,576 keys.
"tiny" (CPU smoke): 33 queries, 200 keys, hidden size 40, float32, vocabulary 64.

Inputs ``(queries [Q, d], keys [N, d], labels [N], targets [Q])``; every contender returns
``(log_p [Q], log_den [Q])`` in float32.

Contenders:
  * ``torch_naive``: ``q @ k^T`` in the states' dtype, then two ``logsumexp`` over ``[Q, N]`` float32
    scores (all keys; keys whose label is the target, others masked to ``-inf``). Materialises
    ``Q x N`` scores (8 GiB in float32 at 1M keys).
  * ``flex_attention``: two ``torch.nn.attention.flex_attention`` calls returning the log-sum-exp
    (``scale = theta``, a 16-wide zero ``V``): one over all keys, one with a ``mask_mod`` keeping keys
    whose label equals the query's target; the block mask is rebuilt every call (the targets change
    every chunk). Compiled on CUDA, eager (unfused) elsewhere. Unavailable where the torch build has
    no flex attention.
  * ``pgolf_triton``: :func:`triton_kernels.neural_cache.cache_target_logprob` with ``impl="triton"``
    and ``validate=False`` (no value checks: no contender checks values).

FLOPs: ``2 Q N d`` (the score matrix). Bytes: the compulsory traffic, reading the keys, labels,
queries and targets once and writing two float32 outputs; the keys dominate (1 GiB at 1M keys).
At 2,048 queries the op is compute-bound on paper (``Q`` FLOPs per key byte), so the floor is
the FLOPs term.
"""
from __future__ import annotations

import functools

import torch

from benchmarks.harness import Benchmark, Case, Contender
from triton_kernels._dispatch import triton_unavailable
from triton_kernels.neural_cache import cache_lookup_reference, cache_target_logprob

THETA = 0.05
VOCAB = 8192
FULL = dict(Q=2048, d=512, dtype=torch.bfloat16)
TINY = dict(Q=33, d=40, dtype=torch.float32)


def _case(name: str, *, Q: int, N: int, d: int, dtype: torch.dtype, V: int = VOCAB) -> Case:
    def make_inputs(device: torch.device, seed: int) -> tuple:
        gen = torch.Generator(device=device).manual_seed(seed)
        return (torch.randn(Q, d, device=device, generator=gen).to(dtype),
                torch.randn(N, d, device=device, generator=gen).to(dtype),
                torch.randint(0, V, (N,), device=device, generator=gen),
                torch.randint(0, V, (Q,), device=device, generator=gen))

    elt = torch.finfo(dtype).bits // 8
    return Case(name=name, make_inputs=make_inputs, flops=2.0 * Q * N * d,
                bytes=float(N * (d * elt + 8) + Q * (d * elt + 8) + Q * 8))


def cases(size: str) -> list[Case]:
    if size == "tiny":
        return [_case("Q33_N200_d40_fp32", N=200, V=64, **TINY)]
    return [_case(f"Q2048_N{n}_d512_bf16", N=n, **FULL) for n in (2048, 32768, 1 << 20)]


def torch_naive(queries, keys, labels, targets):
    s = (queries @ keys.T).float() * THETA  # [Q, N]
    log_den = torch.logsumexp(s, dim=1)
    log_num = torch.logsumexp(s.masked_fill(labels[None, :] != targets[:, None], float("-inf")), dim=1)
    return log_num - log_den, log_den


def _flex_unavailable() -> str | None:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as exc:
        return f"this torch build has no flex_attention ({exc})"
    return None


@functools.cache
def _flex(on_cuda: bool):
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False) if on_cuda else flex_attention


def _flex_lse(q, k, v, block_mask):
    """Natural-log log-sum-exp of ``THETA * q k^T`` over the keys ``block_mask`` keeps (``[Q]``)."""
    fn = _flex(q.is_cuda)
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # older torch: return_lse
        _, lse = fn(q, k, v, block_mask=block_mask, scale=THETA, return_lse=True)
    else:
        _, aux = fn(q, k, v, block_mask=block_mask, scale=THETA, return_aux=AuxRequest(lse=True))
        lse = aux.lse
    return lse[0, 0].float()


def flex_two_calls(queries, keys, labels, targets):
    from torch.nn.attention.flex_attention import create_block_mask
    Q, N = queries.shape[0], keys.shape[0]
    q, k = queries[None, None], keys[None, None]
    v = keys.new_zeros((1, 1, N, 16))

    def same_label(b, h, q_idx, kv_idx):
        return labels[kv_idx] == targets[q_idx]

    log_den = _flex_lse(q, k, v, None)
    log_num = _flex_lse(q, k, v, create_block_mask(same_label, 1, 1, Q, N, device=queries.device))
    return log_num - log_den, log_den


def pgolf_triton(queries, keys, labels, targets):
    out = cache_target_logprob(queries, keys, labels, targets, theta=THETA, vocab_size=VOCAB,
                               validate=False, impl="triton")
    return out.log_p, out.log_den


def reference(queries, keys, labels, targets) -> dict:
    """The torch reference in float32 on the same states (chunked over the keys), and the tolerance
    of :func:`check`: 0.05 for 16-bit states (a bf16-rounded ``q . k`` of magnitude up to ~100 is off
    by up to ~0.2 in the naive contender, 0.01 after ``theta``), 1e-4 for float32."""
    out = cache_lookup_reference(queries, keys, labels, targets, theta=THETA)
    return dict(log_p=out.log_p, log_den=out.log_den, atol=1e-4 if keys.dtype == torch.float32 else 0.05)


def check(out, ref: dict) -> str | None:
    """Same ``-inf`` pattern as the reference, no NaN, finite values within ``ref["atol"]``."""
    for name, got in zip(("log_p", "log_den"), out):
        got, want = got.float(), ref[name].float()
        if got.shape != want.shape:
            return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        if torch.isnan(got).any():
            return f"{name}: NaN"
        if not torch.equal(torch.isneginf(got), torch.isneginf(want)):
            return f"{name}: -inf where the reference is finite (or the reverse)"
        fin = torch.isfinite(want)
        err = (got[fin] - want[fin]).abs().max().item() if fin.any() else 0.0
        if not err <= ref["atol"]:
            return f"{name}: max abs err {err:.3g} > {ref['atol']}"
    return None


BENCHMARK = Benchmark(
    name="neural_cache",
    cases=cases,
    contenders=[
        Contender("torch_naive", torch_naive),
        Contender("flex_attention", flex_two_calls, unavailable=_flex_unavailable),
        Contender("pgolf_triton", pgolf_triton, unavailable=triton_unavailable),
    ],
    reference=reference,
    check=check,
    baseline="torch_naive",
)
