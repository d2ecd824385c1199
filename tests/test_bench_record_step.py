"""The `record` step-time benchmark: its check fails a wrong step, its full cases are the record's
shapes, its FLOP count is the record's matrix work. (Its tiny run on the CPU is one of
``tests/test_bench_harness.py``'s smoke runs.)"""
import torch

from benchmarks import bench_record_step as bench
from pgolf.config import load_config

CPU = torch.device("cpu")


def test_check_passes_a_faithful_step_and_fails_a_wrong_one():
    case = bench.cases("tiny")[0]
    rigs, x, y = case.make_inputs(CPU, 0)
    ref = bench.reference(rigs, x, y)
    same = bench.BENCHMARK.contenders[0].fn(rigs, x, y)
    assert bench.check(same, ref) is None
    assert same[1] is not ref[1]  # each contender trains its own model
    assert "loss" in bench.check((same[0] * 1.001, same[1]), ref)
    doubled = bench.Rig(rigs.spec, CPU, loss_impl="torch", compiled=False)
    for opt in doubled.opts.all:
        for g in opt.param_groups:
            g["lr"] *= 2
    assert "parameter update" in bench.check((doubled.step(x, y), doubled), ref)
    _, again = bench.BENCHMARK.contenders[0].fn(rigs, x, y)
    assert again is same[1]  # the timed calls train on: the rig is made once per case


def test_full_cases_are_one_rank_micro_batch_of_the_record():
    record = load_config("record")
    cases = bench.cases("full")
    assert [c.name for c in cases] == ["record_48x2048_unlooped", "record_48x2048_looped"]
    rigs, x, y = cases[1].make_inputs(CPU, 0)
    assert rigs.spec.cfg.model == record.model and rigs.spec.looped and x.shape == y.shape == (48, 2048)
    assert (x[:, 1:] == y[:, :-1]).all() and (x == 1).any()  # next-token targets, BOS-opened documents
    assert not rigs.rigs  # no model is built until a contender runs


def test_flops_count_the_record_matrices_once_per_virtual_layer():
    """Per token, 6 x matrix weights: 11 (17 looped) x (2*512^2 + 2*512*256 + 2*4*512^2) + 8192*512,
    written out from RECORD_STACK.md's shapes."""
    m = load_config("record").model
    per_block = 2 * 512 * 512 + 2 * 512 * 256 + 2 * 4 * 512 * 512
    assert bench.matrix_params_per_token(m, looped=False) == 11 * per_block + 8192 * 512 == 35_913_728
    assert bench.matrix_params_per_token(m, looped=True) == 17 * per_block + 8192 * 512
    unlooped, looped = bench.cases("full")
    assert unlooped.flops == 6.0 * 98_304 * 35_913_728 and looped.flops > unlooped.flops
