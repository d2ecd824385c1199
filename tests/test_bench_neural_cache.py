"""benchmarks/bench_neural_cache.py: its check accepts the contenders' arithmetic at the GPU run's dtype
and hidden size (bf16, d = 512) and rejects a wrong answer; its cases are the ones the README names."""
import torch

from benchmarks import bench_neural_cache as bench


def _inputs(Q=64, N=4096):
    return bench._case("part", Q=Q, N=N, d=512, dtype=torch.bfloat16).make_inputs(torch.device("cpu"), 0)


def test_check_accepts_the_bf16_naive_formulation_and_rejects_wrong_answers():
    inputs = _inputs()
    ref = bench.reference(*inputs)
    assert ref["atol"] == 0.05 and torch.isfinite(ref["log_den"]).all()
    naive = bench.torch_naive(*inputs)  # bf16 scores: the least accurate contender
    assert bench.check(naive, ref) is None
    log_p, log_den = naive
    assert "log_p: max abs err" in bench.check((log_p + 0.1, log_den), ref)
    assert "NaN" in bench.check((log_p, log_den * float("nan")), ref)
    hidden = torch.where(torch.isfinite(log_p), torch.full_like(log_p, float("-inf")), log_p)
    assert "-inf" in bench.check((hidden, log_den), ref)


def test_flex_formulation_matches_on_cpu():
    inputs = _inputs(Q=16, N=300)
    assert bench.check(bench.flex_two_calls(*inputs), bench.reference(*inputs)) is None


def test_full_cases_are_the_documented_sizes():
    names = [c.name for c in bench.cases("full")]
    assert names == ["Q2048_N2048_d512_bf16", "Q2048_N32768_d512_bf16", "Q2048_N1048576_d512_bf16"]
    big = bench.cases("full")[-1]
    assert big.flops == 2.0 * 2048 * (1 << 20) * 512
    assert big.bytes > (1 << 20) * 512 * 2  # at least the bf16 keys
