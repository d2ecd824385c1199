"""One LoRA test-time-training step: forward through the adapted linears, backward to every adapter (and to the
activations), then the optimizer update of all adapters.

What is timed, honestly: **one layer's five adapters plus the LM head** of the record's TTT model (not the
whole model): ``q`` (512->512 on a frozen base W), ``k`` and ``v`` (512->256 on a base W), ``o`` and ``mlp``
(512->512 bypass deltas, no base W) fed the same attention / MLP inputs, and the head (512->8192 on the frozen
tied embedding), for ``D = 64`` documents x ``T = 2048`` positions (the longest window), rank 80 (the record)
and 96 (the code default), ``s = alpha / r`` with alpha 144. The attention, MLP and softcapped loss between
them are not run: each adapted linear gets a fixed random upstream gradient. The record's model has 17 such
layers and one head, so its adapter work per step is about ``17 x (layer part) + head``; the split between
the two is not measured here. Activations are bf16 on a GPU (the record's autocast), float32 on a CPU.

Each contender clones the adapter parameters and optimizer state it is given (so every call starts from the
same state; the clone is timed, and costs the AdamW contenders more because AdamW keeps ``exp_avg`` too),
runs the forward, ``torch.autograd.backward`` with the upstream gradients (into ``.grad`` of the adapters
and of the activations), and one optimizer step; it returns the parameter update (one subtraction over
all adapter parameters: per matrix for the per-matrix contenders, which also build their
``torch.optim.AdamW`` and its state in the timed call) and the activation gradients. Contenders:

* ``record_bmm_adamw``: the record's approach: ``F.linear`` base + ``torch.bmm`` shrink and expand on
  bf16 copies of the fp32 adapters, one parameter per adapter matrix, ``torch.optim.AdamW(betas=(0, 0.99),
  fused=True)`` (foreach where fused is not supported);
* ``grouped_mm_adamw``: the same with ``torch.nn.functional.grouped_mm`` for the per-document products
  (bf16 on CUDA only; unavailable otherwise, with the reason);
* ``pgolf_triton``: ``triton_kernels.lora.lora_linear`` on views of one flat ``(D, numel)`` buffer, and
  ``lora_adamw_step_`` (one launch over all adapters, no first moment).

FLOPs (useful work): per adapter ``4 D T in out`` for the base path (forward and dX; 0 for a bypass) plus
``6 D T r (in + out)`` for the adapter (forward shrink and expand, backward ``dY B``, ``g A``, ``dA``, ``dB``;
the backward's recomputation of ``x A^T`` is not counted). Bytes: the activations in and out of every adapted
linear in the forward and their gradients in the backward (``2 D T (in + out)`` values of the activation
dtype), plus 24 bytes per adapter parameter (gradient written and read, parameter and second moment read
and written, fp32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.harness import Benchmark, Case, Contender
from triton_kernels._dispatch import triton_unavailable
from triton_kernels.lora import (
    LoraLayout,
    lora_adamw_step_,
    lora_adamw_step_reference_,
    lora_linear,
)
from triton_kernels.lora.reference import lora_linear_reference

ALPHA, LR, BETA2, EPS, WD, STEP = 144.0, 1e-4, 0.99, 1e-10, 0.5, 3
ADAPTERS = ("q", "k", "v", "o", "mlp", "head")  # input: attention input n, MLP input n2, final hidden h
INPUT_OF = {"q": 0, "k": 0, "v": 0, "o": 0, "mlp": 1, "head": 2}
HAS_BASE = {"q": True, "k": True, "v": True, "o": False, "mlp": False, "head": True}


def _outs(d: int, kv: int, vocab: int) -> dict[str, int]:
    return {"q": d, "k": kv, "v": kv, "o": d, "mlp": d, "head": vocab}


def _case(D: int, T: int, d: int, kv: int, vocab: int, r: int, act_dtype: torch.dtype) -> Case:
    """``act_dtype``: the activations' dtype on a GPU (bf16); a CPU run uses float32 whatever it says."""
    outs = _outs(d, kv, vocab)
    layout = LoraLayout(tuple((r, d, outs[a]) for a in ADAPTERS))

    def make_inputs(device: torch.device, seed: int) -> tuple:
        dt = act_dtype if device.type == "cuda" else torch.float32
        g = torch.Generator().manual_seed(seed)
        acts = tuple(torch.randn(D, T, d, generator=g).to(device, dt) for _ in range(3))
        weights = {a: (torch.randn(outs[a], d, generator=g) / d ** 0.5).to(device, dt) for a in ADAPTERS if HAS_BASE[a]}
        dys = tuple((1e-3 * torch.randn(D, T, outs[a], generator=g)).to(device, dt) for a in ADAPTERS)
        flat = layout.init(D, generator=g)
        flat[:, layout.a_numel:] = 0.01 * torch.randn(D, layout.numel - layout.a_numel, generator=g)  # mid-document B
        v = 0.5 + torch.rand(D, layout.numel, generator=g)
        return acts, weights, dys, flat.to(device), v.to(device), layout

    flops = sum((4.0 * D * T * d * outs[a] if HAS_BASE[a] else 0.0) + 6.0 * D * T * r * (d + outs[a]) for a in ADAPTERS)
    act_bytes = torch.finfo(act_dtype).bits // 8
    nbytes = sum(2.0 * D * T * (d + outs[a]) * act_bytes for a in ADAPTERS) + 24.0 * D * layout.numel
    return Case(name=f"D{D}_T{T}_d{d}_r{r}", make_inputs=make_inputs, flops=flops, bytes=nbytes)


def cases(size: str) -> list[Case]:
    if size == "full":
        return [_case(64, 2048, 512, 256, 8192, r, torch.bfloat16) for r in (80, 96)]
    if size == "tiny":
        return [_case(2, 16, 16, 16, 32, 4, torch.float32)]
    raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")


def _backward(ys, dys, leaves) -> list[torch.Tensor]:
    """``.grad`` of each leaf after ``backward`` (the accumulated gradient has the leaf's layout, as in training;
    fused AdamW on this torch's CPU build silently misreads a ``.grad`` whose strides differ from the param's)."""
    torch.autograd.backward(ys, dys)
    return [t.grad for t in leaves]


def _per_matrix_step(acts, weights, dys, flat, v, layout, product):
    """The record's step with per-document products ``product(a, b) = a @ b`` over a leading document axis."""
    s = ALPHA / layout.shapes[0][0]
    params = [t.clone().requires_grad_() for pair in layout.views(flat) for t in pair]
    xs = tuple(a.detach().requires_grad_() for a in acts)
    ys = []
    for i, name in enumerate(ADAPTERS):
        x, A, B = xs[INPUT_OF[name]], params[2 * i], params[2 * i + 1]
        delta = product(product(x, A.to(x.dtype).transpose(1, 2)), B.to(x.dtype).transpose(1, 2)) * s
        ys.append(F.linear(x, weights[name]) + delta if HAS_BASE[name] else delta)
    grads = _backward(ys, dys, params + list(xs))
    kw = dict(lr=LR, betas=(0.0, BETA2), eps=EPS, weight_decay=WD)
    try:
        opt = torch.optim.AdamW(params, fused=True, **kw)
    except RuntimeError:  # fused not supported for this device / dtype
        opt = torch.optim.AdamW(params, foreach=True, **kw)
    for p, vp in zip(params, [t for pair in layout.views(v) for t in pair]):
        opt.state[p] = {"step": torch.tensor(float(STEP), device=p.device if opt.defaults["fused"] else "cpu"),
                        "exp_avg": torch.zeros_like(p), "exp_avg_sq": vp.contiguous()}  # a copy: vp is a strided view
    opt.step()
    with torch.no_grad():  # the update per matrix (A_0, B_0, A_1, ...): one subtraction, as pgolf_triton's
        update = [p.detach() - f for p, f in zip(params, [t for pair in layout.views(flat) for t in pair])]
    return update, tuple(grads[len(params):])


def record_bmm_adamw(acts, weights, dys, flat, v, layout):
    return _per_matrix_step(acts, weights, dys, flat, v, layout, torch.bmm)


def grouped_mm_adamw(acts, weights, dys, flat, v, layout):
    return _per_matrix_step(acts, weights, dys, flat, v, layout, F.grouped_mm)


def _grouped_mm_unavailable() -> str | None:
    if not hasattr(F, "grouped_mm"):
        return f"torch {torch.__version__} has no torch.nn.functional.grouped_mm"
    if not torch.cuda.is_available():
        return "torch.nn.functional.grouped_mm takes bf16 CUDA tensors (SM >= 80) only; no CUDA device here"
    return None


def pgolf_triton(acts, weights, dys, flat, v, layout):
    s = ALPHA / layout.shapes[0][0]
    param, v = flat.clone().requires_grad_(), v.clone()
    step = torch.full((flat.shape[0],), STEP, dtype=torch.int32, device=flat.device)
    xs = tuple(a.detach().requires_grad_() for a in acts)
    ys = [lora_linear(xs[INPUT_OF[name]], A, B, weight=weights.get(name), scale=s, impl="triton")
          for name, (A, B) in zip(ADAPTERS, layout.views(param))]
    grad, *dxs = _backward(ys, dys, [param, *xs])
    with torch.no_grad():
        new = param.detach()
        lora_adamw_step_(new, grad, v, step, lr=LR, beta2=BETA2, eps=EPS, weight_decay=WD, impl="triton")
    return new - flat, tuple(dxs)


def reference(acts, weights, dys, flat, v, layout):
    """The same step in float32 with the pure-torch reference ops."""
    s = ALPHA / layout.shapes[0][0]
    param, v, step = flat.clone().requires_grad_(), v.clone(), torch.full((flat.shape[0],), STEP, device=flat.device)
    xs = tuple(a.detach().float().requires_grad_() for a in acts)
    ys = [lora_linear_reference(xs[INPUT_OF[name]], A, B, weight=None if name not in weights else weights[name].float(),
                                scale=s) for name, (A, B) in zip(ADAPTERS, layout.views(param))]
    grad, *dxs = _backward(ys, [d.float() for d in dys], [param, *xs])
    new = param.detach()
    lora_adamw_step_reference_(new, grad, v, step, lr=LR, beta2=BETA2, eps=EPS, weight_decay=WD)
    return new - flat, tuple(dxs)


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _flat_update(update) -> torch.Tensor:
    """A contender's update as one ``(D, numel)`` tensor of the layout: the per-matrix list of the
    per-matrix contenders (``A_0, B_0, A_1, ...``) put in layout order here, outside the timed call."""
    if isinstance(update, torch.Tensor):
        return update
    return torch.cat([t.reshape(t.shape[0], -1) for t in update[0::2]]
                     + [t.reshape(t.shape[0], -1) for t in update[1::2]], dim=1)


def check(out, ref) -> str | None:
    """Relative RMS error of the parameter update and of each activation gradient against the float32 step."""
    (upd, dxs), (upd_ref, dxs_ref) = out, ref
    upd = _flat_update(upd)
    tol = 1e-4 if dxs[0].dtype == torch.float32 else 5e-2
    for name, a, b in (("update", upd, upd_ref), *((f"dx{i}", a, b) for i, (a, b) in enumerate(zip(dxs, dxs_ref)))):
        if a.shape != b.shape:
            return f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        err = _rel_rms(a, b)
        if not err < tol:
            return f"{name}: relative RMS error {err:.3g} > {tol}"
    return None


BENCHMARK = Benchmark(
    name="lora_ttt",
    cases=cases,
    contenders=[
        Contender("record_bmm_adamw", record_bmm_adamw),
        Contender("grouped_mm_adamw", grouped_mm_adamw, unavailable=_grouped_mm_unavailable),
        Contender("pgolf_triton", pgolf_triton, unavailable=triton_unavailable),
    ],
    reference=reference,
    check=check,
    baseline="record_bmm_adamw",
)
