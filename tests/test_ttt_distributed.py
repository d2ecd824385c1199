"""LoRA TTT on two gloo processes (``torch.multiprocessing`` spawn, CPU): the global SGD phases' collectives,
what the totals depend on, and the eval time budget running out on one rank only (no deadlock).

The tiny model and stream of ``tests/test_ttt.py`` (ten documents, groups of four: three groups; the
schedule deals group 0 to rank 0 and groups 1, 2 to rank 1). With ``phases=2, phase_docs=6`` the
boundaries are 3 and 6 documents: phase 1 comes after group 0, phase 2 after group 1, so rank 1 must
join phase 1 *before* its first group. Every spawn has a deadline (and gloo a timeout): a hang fails.
"""
import dataclasses
import itertools
import os
import socket
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_ttt import BASE, BOS, CHUNK, CPU, LANES, WINDOW, stream, tiny_model, ttt

from pgolf.eval.geometry import Doc
from pgolf.eval.predictor import PlainModel

PHASED = dataclasses.replace(BASE, phases=2, phase_docs=6, warm_start_a=False)
DEADLINE_S = 240


def evaluate(cfg, *, rank=0, world=1, clock=None, max_seconds=0.0) -> dict:
    """One TTT evaluation of the fixed stream on this rank: global totals, per-token record, this rank's counters."""
    from pgolf.eval.engine import evaluate_geometry

    model, toks = tiny_model(), stream()
    p = ttt(model, toks, cfg, rank=rank, world_size=world)
    kw = {"clock": clock} if clock is not None else {}
    r = evaluate_geometry(Doc(CHUNK, WINDOW, BOS).plan(toks), p, toks, byte_counts=np.ones(len(toks), np.int64),
                          batch_lanes=LANES, rank=rank, world_size=world, record=True, max_seconds=max_seconds,
                          fallback=PlainModel(model, CPU), **kw)
    return {"score": (r.score.nll, r.score.tokens, r.score.bytes), "nll": r.record.nll, "count": r.record.count,
            "fallback_tokens": r.fallback_tokens, "counts": dict(p.counts), "groups": list(p.my_groups)}


def ticking():
    """A fake clock that advances one second per reading: every step takes 2 s (3 readings)."""
    ticks = itertools.count()
    return lambda: float(next(ticks))


def _scenarios(name: str, rank: int, world: int) -> dict:
    if name == "phases":
        return {"two_seqs": evaluate(dataclasses.replace(PHASED, phase_chunk_tokens=2 * WINDOW), rank=rank, world=world),
                "four_seqs": evaluate(dataclasses.replace(PHASED, phase_chunk_tokens=4 * WINDOW), rank=rank,
                                      world=world),
                "warm_start": evaluate(dataclasses.replace(BASE, warm_start_a=True), rank=rank, world=world)}
    # the budget: 5 s; only rank `late` has a clock that moves, so it runs out at its third step
    out = {}
    for late in (0, 1):
        clock = ticking() if rank == late else (lambda: 0.0)
        out[f"late{late}"] = evaluate(PHASED, rank=rank, world=world, clock=clock, max_seconds=5.0)
    return out


def _worker(rank: int, world: int, port: int, name: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        torch.save(_scenarios(name, rank, world), os.path.join(out_dir, f"{name}{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn_two(name: str, tmp_path) -> list[dict]:
    """Run scenario ``name`` on two gloo ranks; fail (killing them) if they do not finish by the deadline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.start_processes(_worker, args=(2, port, name, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"two-rank TTT scenario {name!r} did not finish in {DEADLINE_S} s (a rank hangs in a collective)")
    return [torch.load(tmp_path / f"{name}{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
@pytest.mark.distributed
def test_phases_run_across_ranks_and_the_totals_match_one_rank(tmp_path):
    two = spawn_two("phases", tmp_path)
    assert two[0]["two_seqs"]["groups"] == [0] and two[1]["two_seqs"]["groups"] == [1, 2]
    for case in ("two_seqs", "four_seqs"):
        one = evaluate(dataclasses.replace(PHASED, phase_chunk_tokens=(2 if case == "two_seqs" else 4) * WINDOW))
        assert one["counts"]["phases"] == 2 and one["counts"]["phase_steps"] > 0
        for r in (0, 1):
            got = two[r][case]
            assert got["counts"]["phases"] == 2 and got["counts"]["phase_steps"] == one["counts"]["phase_steps"]
            assert (got["count"][1:] == 1).all()
            if case == "two_seqs":  # each chunk's gradient is one sequence, or the sum of two: order-free, bit for bit
                assert got["score"] == one["score"], r
                assert np.array_equal(got["nll"], one["nll"], equal_nan=True)
            else:  # four sequences per chunk: two per rank, summed in another order
                assert got["score"][1:] == one["score"][1:]
                assert got["score"][0] == pytest.approx(one["score"][0], rel=1e-6)
                assert np.nanmax(np.abs(got["nll"] - one["nll"])) < 1e-4
    # the phases changed the model: without them the same run scores differently
    no_phases = evaluate(dataclasses.replace(PHASED, phases=0, phase_chunk_tokens=2 * WINDOW))
    assert np.nanmax(np.abs(no_phases["nll"] - two[0]["two_seqs"]["nll"])) > 1e-3
    # warm-started A (no phases, which draw a fresh A for everyone): rank-dependent by design; rank 1's
    # group 1 starts from a fresh A, one rank's from the A that group 0 trained
    one = evaluate(dataclasses.replace(BASE, warm_start_a=True))
    warm = two[0]["warm_start"]
    assert warm["score"][1:] == one["score"][1:] and np.isfinite(warm["score"][0])
    assert warm["score"][0] != one["score"][0]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_budget_that_runs_out_on_one_rank_calls_off_the_phases_on_all(tmp_path):
    """Rank ``late``'s clock runs out at its third step; the other rank's never does. Before the fix the
    other rank waited in the next phase's collectives forever (here: gloo's 60 s timeout, the deadline)."""
    two = spawn_two("budget", tmp_path)
    # late = 1: rank 1 joins phase 1 before its first group, then runs out inside group 1, so phase 2 is
    # called off; late = 0: rank 0 runs out inside group 0, before phase 1, so both phases are called off
    for late, ran in ((1, 1), (0, 0)):
        got = [two[r][f"late{late}"] for r in (0, 1)]
        for r in (0, 1):
            assert got[r]["counts"]["phases"] == ran and got[r]["counts"]["phases_cancelled"] == 2 - ran, (late, r)
            assert (got[r]["count"][1:] == 1).all() and np.isfinite(got[r]["nll"][1:]).all()
        assert got[0]["score"] == got[1]["score"]
        assert 0 < got[0]["fallback_tokens"] < got[0]["score"][1]
