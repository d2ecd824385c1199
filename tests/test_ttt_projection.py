"""``benchmarks/ttt_projection.py``: the per-batch cost model and the longest-first dealing to ranks."""
import numpy as np

from benchmarks.ttt_projection import batch_seconds, main, project, read_batches


def test_batch_cost_counts_padded_window_tokens():
    # 100 predictions, chunk 48 -> 3 steps of widths 48, 96, 100->min(144, 120)=120 with window 120
    t = batch_seconds(100, 64, chunk=48, window=120, token_s=1.0, step_s=10.0)
    assert t == 3 * 10.0 + 64 * (48 + 96 + 120)


def test_projection_is_bounded_by_the_longest_batch_and_the_average(tmp_path):
    tsv = tmp_path / "b.tsv"
    tsv.write_text("# lengths\nbatch\tmin_len\tmax_len\n1\t10\t20\n400\t200\t300\n782\t3000\t9000\n")
    bounds = read_batches(str(tsv))
    assert bounds.shape == (782, 2) and np.all(np.diff(bounds[:, 1]) >= 0)
    one = project(bounds, ranks=1, chunk=48, window=2048, token_s=1e-6, step_s=1e-3)
    eight = project(bounds, ranks=8, chunk=48, window=2048, token_s=1e-6, step_s=1e-3)
    assert abs(one["eval_s"] - one["work_s"]) < 1e-6 * one["work_s"]
    assert eight["critical_path_s"] <= eight["eval_s"] and eight["work_s"] / 8 <= eight["eval_s"] + 1e-9
    assert main(["--tsv", str(tsv), "--token-us", "0.01", "--step-ms", "5"]) == 0
