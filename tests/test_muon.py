"""pgolf.optim.muon.Muon against a per-matrix implementation of the official algorithm, across impls,
across a checkpoint, and across 2 torchrun processes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.optim.muon import Muon
from triton_kernels._dispatch import interpreter_enabled
from _ports import free_port

HERE = Path(__file__).resolve().parent


def official_zeropower(G: torch.Tensor, steps: int, dtype: torch.dtype, eps: float = 1e-7) -> torch.Tensor:
    """The official train_gpt.py Newton-Schulz, one matrix at a time, written out here as the oracle."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(dtype)
    X = X / (X.norm() + eps)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if tall else X


def official_step(params, bufs, *, lr, momentum, steps=5, nesterov=True, weight_decay=0.0, row_norm=False,
                  dtype=torch.float32):
    """One Muon step on a list of parameters (with .grad), matrix by matrix."""
    for p, buf in zip(params, bufs):
        g = p.grad
        buf.mul_(momentum).add_(g)
        g = g.add(buf, alpha=momentum) if nesterov else buf
        if row_norm:
            g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-7)
        u = official_zeropower(g, steps, dtype)
        u = u * max(1, p.size(0) / p.size(1)) ** 0.5
        p.mul_(1 - lr * weight_decay)
        p.add_(u.to(p.dtype), alpha=-lr)


def _problem(shapes, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    return init, grads


def _run_pgolf(init, grads, *, lrs, moms, **kw):
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = Muon(params, lr=lrs[0], momentum=moms[0], **kw)
    for step, g in enumerate(grads):
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = lrs[step], moms[step]
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    return [p.detach() for p in params]


def _run_official(init, grads, *, lrs, moms, **kw):
    params = [t.clone() for t in init]
    bufs = [torch.zeros_like(t) for t in init]
    for step, g in enumerate(grads):
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        official_step(params, bufs, lr=lrs[step], momentum=moms[step], **kw)
    return params


LRS, MOMS = [0.04, 0.03, 0.02], [0.85, 0.9, 0.95]
ONE_PER_BANK = [(24, 40), (40, 24), (16, 16)]
BANKED = [(12, 20)] * 3 + [(20, 12)] * 2 + [(9, 9)]


@pytest.mark.parametrize("shapes", [ONE_PER_BANK, BANKED], ids=["one_per_bank", "banked"])
@pytest.mark.parametrize("opts", [{}, {"nesterov": False}, {"weight_decay": 0.5, "row_norm": True}],
                         ids=["nesterov", "plain", "wd_rownorm"])
def test_matches_official_per_matrix_fp32(shapes, opts):
    init, grads = _problem(shapes, 3)
    ours = _run_pgolf(init, grads, lrs=LRS, moms=MOMS, impl="torch", **opts)
    ref = _run_official(init, grads, lrs=LRS, moms=MOMS, **opts)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=0)


def test_matches_official_per_matrix_bf16():
    """ns_dtype=bf16 (the CUDA default) with the torch path reproduces the official bf16 cast exactly on CPU."""
    init, grads = _problem(BANKED, 3)
    ours = _run_pgolf(init, grads, lrs=LRS, moms=MOMS, impl="torch", ns_dtype=torch.bfloat16)
    ref = _run_official(init, grads, lrs=LRS, moms=MOMS, dtype=torch.bfloat16)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_torch_and_triton_give_the_same_updates():
    init, grads = _problem([(16, 24)] * 2 + [(24, 16)] * 2 + [(17, 17)], 2, seed=1)
    kw = dict(lrs=LRS, moms=MOMS, schedule="polar_express", row_norm=True)
    torch_out = _run_pgolf(init, grads, impl="torch", **kw)
    triton_out = _run_pgolf(init, grads, impl="triton", **kw)
    for a, b in zip(torch_out, triton_out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_state_dict_resume_is_exact():
    init, grads = _problem(BANKED, 4, seed=2)
    straight = _run_pgolf(init, grads, lrs=[0.04] * 4, moms=[0.95] * 4, impl="torch")

    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = Muon(params, lr=0.04, momentum=0.95, impl="torch")
    for g in grads[:2]:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    saved = {"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}
    assert set(saved["opt"]["state"]) == set(range(len(params)))
    assert all(set(s) == {"momentum_buffer"} for s in saved["opt"]["state"].values())

    resumed = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = Muon(resumed, lr=1.0, momentum=0.0, impl="torch")  # hyperparameters come from the checkpoint
    opt2.load_state_dict(saved["opt"])
    for g in grads[2:]:
        for p, gi in zip(resumed, g):
            p.grad = gi.clone()
        opt2.step()
    for a, b in zip(straight, resumed):
        torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)


def test_params_without_grad_are_untouched_and_json_schedule():
    a, b = torch.nn.Parameter(torch.randn(8, 12)), torch.nn.Parameter(torch.randn(8, 12))
    before = b.detach().clone()
    opt = Muon([a, b], schedule="[[3.4445, -4.775, 2.0315]]", backend_steps=2, impl="torch")
    a.grad = torch.randn(8, 12)
    opt.step()
    assert torch.equal(b.detach(), before) and b not in opt.state
    assert opt.param_groups[0]["schedule"] == [(3.4445, -4.775, 2.0315)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.randn(4))])
    with pytest.raises(ValueError, match="unknown schedule"):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], schedule="cubic")
    with pytest.raises(ValueError, match="momentum"):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], momentum=1.0)
    with pytest.raises(ValueError, match="impl"):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], impl="cuda")


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    worker = str(HERE / "dist_muon_worker.py")
    single, double = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, worker, str(single)], env=env, check=True, timeout=120)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", worker, str(double)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = torch.load(single), torch.load(double)
    assert (one["world"], two["world"]) == ("1", "2")
    for ga, gb in zip(one["params"], two["params"]):
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for k, s in one["state"]["state"].items():
        torch.testing.assert_close(s["momentum_buffer"], two["state"]["state"][k]["momentum_buffer"], atol=0, rtol=0)


@pytest.mark.skipif(not interpreter_enabled(), reason="checks the interpreter default of impl='auto'")
def test_auto_uses_triton_under_the_interpreter(monkeypatch):
    import triton_kernels.newton_schulz as ns

    calls = []
    real = ns.newton_schulz_triton
    monkeypatch.setattr(ns, "newton_schulz_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    init, grads = _problem([(8, 16)], 1)
    _run_pgolf(init, grads, lrs=LRS, moms=MOMS)
    assert calls
