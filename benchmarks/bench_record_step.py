"""One full training step of the `record` preset's model: forward, backward, Muon + Adam update.

What one call does (as :meth:`pgolf.train.loop.Trainer.train_step` + ``Optimizers.step`` do, one
micro-batch, one process): drop the gradients, run the loss forward under the device's autocast (bf16
on CUDA), backward, clip the gradient norm, step Muon (the record's Polar Express, row
normalisation, decoupled weight decay) and the AdamW groups, update the EMA. Every contender steps
its own model and optimisers, built from the same seed (so they are never one contender's inputs);
the check compares a contender's *first* step (from the initial weights, on input set 0) with the
reference's, and the timed steps that follow train on from there (a step costs the same whatever
the weights).

Cases: ``full`` (GPU) the `record` preset exactly (11 x 512, vocab 8192, MLP 4x, every feature,
document attention with segments of 2048) at one rank's micro-batch of the record, 48 sequences x
2048 = 98,304 tokens, once before the loop switch (11 layers) and once after it (17 virtual
layers); ``tiny`` (CPU smoke test under ``TRITON_INTERPRET=1``) the same features at 4 x 32, vocab
64, 1 x 32 tokens. Tokens are random with a BOS opening documents of geometric length (mean 512;
16 on ``tiny``).

Contenders (baseline first):
  * ``eager, torch CE``: the model uncompiled, ``model.loss_impl=torch``;
  * ``eager, fused CE``: uncompiled, the fused softcapped CE kernel (``loss_impl=fused``);
  * ``compiled, torch CE`` and ``compiled, fused CE``: ``torch.compile(model, dynamic=False)`` as
    the pipeline compiles it; the second is the `record` preset as configured. CUDA only (inductor's
    CPU compile of this model takes minutes, and CPU times are no speed claim); the first call,
    which compiles, is the check's and is never timed.

Check: the step's loss within 1e-5 relative of the reference's (eager, torch CE) in fp32 on a CPU,
2e-2 under bf16 autocast; the parameter update (weights after the step minus before) within 1e-3
(CPU) or 1e-1 (GPU) of the reference's update, relative to its norm (:data:`TOL`). The GPU
tolerances are set, not measured: no GPU has run this benchmark yet.

FLOPs: ``6 x tokens x`` the matrix parameters one token passes through (each block's attention and
MLP weights once per virtual layer, plus the tied head); attention scores, norms, gates and the
optimiser are not counted. Bytes: 0 (compute-bound).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from benchmarks.harness import Benchmark, Case, Contender
from pgolf.config import ModelConfig, RunConfig, load_config
from pgolf.model.gpt import GPT
from pgolf.model.topology import layer_order
from pgolf.optim.optimizers import Optimizers
from pgolf.util.device import autocast_for
from triton_kernels._dispatch import triton_unavailable

BOS = 1
TINY_SETS = ["model.vocab_size=64", "model.num_layers=4", "model.model_dim=32", "model.num_heads=2",
             "model.num_kv_heads=1", "model.rope_dims=8", "model.xsa_last_n=4", "model.loop_start=1",
             "model.loop_end=2", "model.num_loops=1", "model.parallel_start_layer=3", "model.max_segment=16",
             "train.seq_len=32", "train.train_batch_tokens=32", "train.micro_batch_tokens=32",
             "train.kernels=torch"]  # Newton-Schulz in torch: under the interpreter its kernels take seconds a step
# Relative error of (the loss, the parameter update). CPU, fp32, measured on the tiny case: the fused
# kernel's loss equals the torch path's and its update differs by 1.0e-4 of the norm (Adam's first
# step normalises the gradient, so rounding in its smallest entries shows). CUDA: set, not measured.
TOL = {"cpu": (1e-5, 1e-3), "cuda": (2e-2, 1e-1)}


@dataclass
class Spec:
    """What a case trains: the run config (model, optimisers, schedule), the topology, the batch."""

    cfg: RunConfig
    looped: bool
    sequences: int
    mean_doc: int


class Rig:
    """One contender's model, compiled forward and optimisers for one case, with its initial weights."""

    def __init__(self, spec: Spec, device: torch.device, *, loss_impl: str, compiled: bool):
        torch.manual_seed(0)
        model_cfg = dataclasses.replace(spec.cfg.model, loss_impl=loss_impl)
        self.model = GPT(model_cfg).place(device)
        if model_cfg.num_loops:
            self.model.set_looping(spec.looped)
        self.forward = torch.compile(self.model, dynamic=False) if compiled else self.model
        self.opts = Optimizers(self.model, spec.cfg.optim, spec.cfg.train)
        self.opts.schedule(0, 0.0)
        self.start = self.weights()

    def weights(self) -> torch.Tensor:
        return torch.cat([p.detach().float().flatten() for p in self.model.parameters()])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.opts.zero_grad()
        with autocast_for(x.device):
            loss = self.forward(x, y)
        loss.backward()
        self.opts.step()
        return loss.detach()


class Rigs:
    """The rigs of one case, made on first use (``name -> Rig``). Cases run one after another, so a
    case that makes its first rig frees the previous case's."""

    current: list["Rigs"] = []  # the case whose rigs are alive

    def __init__(self, spec: Spec):
        self.spec, self.rigs = spec, {}

    def get(self, name: str, device: torch.device, make: Callable[[Spec, torch.device], Rig]) -> Rig:
        if name not in self.rigs:
            if Rigs.current and Rigs.current[0] is not self:
                Rigs.current[0].rigs.clear()
            Rigs.current[:] = [self]
            self.rigs[name] = make(self.spec, device)
        return self.rigs[name]


def _batch(spec: Spec, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = np.random.default_rng(seed)
    seq, vocab = spec.cfg.train.seq_len, spec.cfg.model.vocab_size
    toks = gen.integers(2, vocab, spec.sequences * seq + 1)
    pos = 0
    while pos < len(toks):
        toks[pos] = BOS
        pos += 1 + int(gen.geometric(1 / spec.mean_doc))
    ids = torch.from_numpy(toks.astype(np.int64))
    return ids[:-1].view(spec.sequences, seq).to(device), ids[1:].view(spec.sequences, seq).to(device)


def matrix_params_per_token(cfg: ModelConfig, *, looped: bool) -> int:
    """Matrix weights one token passes through: attention (q, k, v, out) and MLP per virtual layer,
    plus the head."""
    d = cfg.model_dim
    kv = d * cfg.num_kv_heads // cfg.num_heads
    per_block = 2 * d * d + 2 * d * kv + 2 * cfg.mlp_mult * d * d
    encoder, decoder = layer_order(cfg, looped=looped)
    return (len(encoder) + len(decoder)) * per_block + cfg.vocab_size * d


def _case(name: str, spec: Spec) -> Case:
    rigs = Rigs(spec)

    def make_inputs(device: torch.device, seed: int) -> tuple:
        return (rigs, *_batch(spec, device, seed))

    tokens = spec.sequences * spec.cfg.train.seq_len
    flops = 6.0 * tokens * matrix_params_per_token(spec.cfg.model, looped=spec.looped)
    return Case(name=name, make_inputs=make_inputs, flops=flops, bytes=0.0)


def cases(size: str) -> list[Case]:
    if size == "full":
        cfg = load_config("record")
        seqs = cfg.train.micro_batch_tokens // cfg.train.seq_len
        return [_case(f"record_{seqs}x{cfg.train.seq_len}_{topo}", Spec(cfg, looped, seqs, 512))
                for topo, looped in (("unlooped", False), ("looped", True))]
    if size == "tiny":
        cfg = load_config("record", sets=TINY_SETS)
        return [_case("record_features_1x32_looped", Spec(cfg, True, 1, 16))]
    raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")


def _contender(name: str, *, loss_impl: str, compiled: bool) -> Callable:
    def make(spec: Spec, device: torch.device) -> Rig:
        return Rig(spec, device, loss_impl=loss_impl, compiled=compiled)

    def step(rigs: Rigs, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Rig]:
        rig = rigs.get(name, x.device, make)
        return rig.step(x, y), rig

    return step


REFERENCE = "reference (eager, torch CE)"
reference = _contender(REFERENCE, loss_impl="torch", compiled=False)


def check(out: tuple[torch.Tensor, Rig], ref: tuple[torch.Tensor, Rig]) -> str | None:
    (loss, rig), (ref_loss, ref_rig) = out, ref
    loss_tol, update_tol = TOL[loss.device.type]
    err = abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))
    if not err < loss_tol:
        return f"loss {float(loss):.6f} vs the reference's {float(ref_loss):.6f} (relative error {err:.2e})"
    update, ref_update = rig.weights() - rig.start, ref_rig.weights() - ref_rig.start
    err = float((update - ref_update).norm() / ref_update.norm())
    if not err < update_tol:
        return f"parameter update differs from the reference's by {err:.2e} of its norm (needs < {update_tol:g})"
    return None


def _compile_unavailable() -> str | None:
    return None if torch.cuda.is_available() else \
        "timed on CUDA only (inductor's CPU compile of this model takes minutes; CPU times are no speed claim)"


BENCHMARK = Benchmark(
    name="record_step",
    cases=cases,
    contenders=[
        Contender("eager, torch CE", _contender("eager, torch CE", loss_impl="torch", compiled=False)),
        Contender("eager, fused CE", _contender("eager, fused CE", loss_impl="fused", compiled=False),
                  unavailable=triton_unavailable),
        Contender("compiled, torch CE", _contender("compiled, torch CE", loss_impl="torch", compiled=True),
                  unavailable=_compile_unavailable),
        Contender("compiled, fused CE", _contender("compiled, fused CE", loss_impl="fused", compiled=True),
                  unavailable=lambda: _compile_unavailable() or triton_unavailable()),
    ],
    reference=reference,
    check=check,
    baseline="eager, torch CE",
)
