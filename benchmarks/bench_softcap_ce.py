"""Softcapped cross-entropy, forward + backward: ``mean CE(30 tanh(l / 30), y)`` and ``dl``.

Cases: ``full`` (GPU) is N = 65,536 and 98,304 tokens (one record-stack step per GPU is 98,304) x
V = 8,192 and 1,024 (the record stack's and the baseline's vocabularies), bf16 logits; ``tiny`` is a
CPU smoke run in float32 at odd vocabularies.

Contenders (each returns the mean loss and ``dl`` in the logits' dtype):

* ``torch eager`` (baseline): ``F.cross_entropy((30 * torch.tanh(l / 30)).float(), y)``, the model's
  ``model.loss_impl=torch`` loss (:func:`pgolf.model.loss.softcap` in the logits' dtype, then float32:
  train_gpt.py's order of roundings); it materialises a capped copy and a float32 copy of the logits.
* ``torch.compile``: the same function under ``torch.compile(fullgraph=True)``.
* ``pgolf triton``: :func:`triton_kernels.softcap_ce.softcap_cross_entropy` with
  ``check_targets=False`` (the range check is a host sync; under ``torch.compile`` it is skipped
  anyway). Its forward reads the logits once and its backward reads them again.
* ``liger``: Liger-Kernel's ``liger_cross_entropy(..., softcap=30)`` where it is importable (not a
  pgolf dependency). Liger writes its gradient into its input buffer during the forward, and
  contenders must not modify their inputs, so it runs on a copy of the logits: its time includes
  that copy (one read + one write of the logits).

Bytes are the compulsory traffic of a fused forward + backward: read the logits and targets once,
write ``dl`` (``2 e N V + 8 N``, ``e`` bytes per logit). A design that recomputes in the backward
(pgolf's) reads the logits twice, so it can reach at most ~67 % of that floor. FLOPs are counted
as 0 (memory-bound op).
"""
from __future__ import annotations

import functools
import importlib
import inspect

import torch
import torch.nn.functional as F

from benchmarks.harness import Benchmark, Case, Contender
from pgolf.model.loss import softcap
from triton_kernels._dispatch import triton_unavailable
from triton_kernels.softcap_ce import softcap_ce_reference, softcap_cross_entropy

SOFTCAP = 30.0
FULL_SHAPES = [(65_536, 8192), (65_536, 1024), (98_304, 8192), (98_304, 1024)]  # (tokens N, vocabulary V)
TINY_SHAPES = [(16, 97), (12, 257)]


def _make(tokens: int, vocab: int, dtype: torch.dtype):
    def make_inputs(device: torch.device, seed: int) -> tuple:
        g = torch.Generator(device="cpu").manual_seed(seed)
        # raw logits of a trained-ish head: a few tens at most, so the softcap bends but rarely saturates
        logits = (10 * torch.randn(tokens, vocab, generator=g)).to(device, dtype).requires_grad_()
        return logits, torch.randint(0, vocab, (tokens,), generator=g).to(device)
    return make_inputs


def _case(tokens: int, vocab: int, dtype: torch.dtype) -> Case:
    e = torch.finfo(dtype).bits // 8
    return Case(name=f"N{tokens}_V{vocab}_{str(dtype).removeprefix('torch.')}", make_inputs=_make(tokens, vocab, dtype),
                flops=0.0, bytes=float(2 * e * tokens * vocab + 8 * tokens))


def cases(size: str) -> list[Case]:
    if size == "full":
        return [_case(n, v, torch.bfloat16) for n, v in FULL_SHAPES]
    if size == "tiny":
        return [_case(n, v, torch.float32) for n, v in TINY_SHAPES]
    raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")


def _loss_and_grad(loss_fn, logits, targets):
    loss = loss_fn(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss, grad


def _eager_loss(logits, targets):
    return F.cross_entropy(softcap(logits, SOFTCAP).float(), targets)


def torch_eager(logits, targets):
    return _loss_and_grad(_eager_loss, logits, targets)


@functools.cache
def _compiled():
    return torch.compile(_eager_loss, fullgraph=True, dynamic=False)


def torch_compiled(logits, targets):
    return _loss_and_grad(_compiled(), logits, targets)


def pgolf_triton(logits, targets):
    return _loss_and_grad(functools.partial(softcap_cross_entropy, softcap=SOFTCAP, impl="triton",
                                            check_targets=False), logits, targets)


def _liger_fn():
    return importlib.import_module("liger_kernel.transformers.functional").liger_cross_entropy


def liger_unavailable() -> str | None:
    """Why Liger-Kernel's cross-entropy cannot run here, or None."""
    try:
        fn = _liger_fn()
    except ImportError as exc:
        return f"liger_kernel is not installed ({exc.__class__.__name__}: {exc}); pip install liger-kernel to add it"
    if "softcap" not in inspect.signature(fn).parameters:
        return "this liger_kernel's liger_cross_entropy has no softcap argument"
    if not torch.cuda.is_available():
        return "Liger-Kernel needs a CUDA GPU"
    return None


def liger(logits, targets):
    copy = logits.detach().clone().requires_grad_()  # Liger overwrites its input with the gradient
    return _loss_and_grad(functools.partial(_liger_fn(), softcap=SOFTCAP), copy, targets)


def reference(logits, targets):
    """Float32 loss and gradient from the pure-torch reference on float32 logits."""
    leaf = logits.detach().float().requires_grad_()
    return _loss_and_grad(lambda lf, y: softcap_ce_reference(lf, y, softcap=SOFTCAP)[0].mean(), leaf, targets)


def check(out, ref) -> str | None:
    """Loss and gradient within 1e-5 of the reference for float32 logits; for 16-bit logits (the
    gradient comes back in their dtype) the loss within 5e-3 (the baseline caps in bf16: up to
    2^-9 of each capped logit) and the gradient within 1e-2 (one bf16 rounding). The loss relative to
    max(1, |ref|), the gradient's max error relative to max |ref|."""
    (loss, grad), (ref_loss, ref_grad) = out, ref
    if loss.shape != () or grad.shape != ref_grad.shape:
        return f"shapes: loss {tuple(loss.shape)}, grad {tuple(grad.shape)} (want (), {tuple(ref_grad.shape)})"
    tol = 1e-5 if grad.dtype == torch.float32 else 5e-3
    if not abs(loss.item() - ref_loss.item()) / max(1.0, abs(ref_loss.item())) < tol:
        return f"loss {loss.item():.6g} ({loss.dtype}) vs {ref_loss.item():.6g}, tolerance {tol}"
    tol = 1e-5 if grad.dtype == torch.float32 else 1e-2
    err = ((grad.double() - ref_grad.double()).abs().max() / ref_grad.double().abs().max().clamp_min(1e-30)).item()
    if not err < tol:
        return f"grad: max error {err:.3g} relative to max |ref|, tolerance {tol}"
    return None


BENCHMARK = Benchmark(
    name="softcap_ce",
    cases=cases,
    contenders=[
        Contender("torch eager", torch_eager),
        Contender("torch.compile", torch_compiled),
        Contender("pgolf triton", pgolf_triton, unavailable=triton_unavailable),
        Contender("liger", liger, unavailable=liger_unavailable),
    ],
    reference=reference,
    check=check,
    baseline="torch eager",
)
