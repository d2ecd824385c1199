"""``benchmarks/ttt_projection.py``: the per-batch cost model and the longest-first dealing to ranks."""
import numpy as np
import pytest

from benchmarks.harness import write_results
from pgolf.data.shards import write_shard
from benchmarks.ttt_projection import (
    PREDICTIONS,
    batch_seconds,
    batches_from_shard,
    costs_from_bench,
    default_tsv,
    main,
    project,
    read_batches,
)


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


def test_longest_first_dealing_balances_the_ranks():
    # chunk 1, no per-token cost, 1 s per step: a batch takes its longest document's length in seconds.
    # Longest first on 2 ranks: 4 | 2+2, then the four 1s alternate: 6 and 6. Dealt in the given
    # (ascending) order it would be 1+1+2+4 | 1+1+2 = 8; everything on one rank, 12.
    bounds = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [2, 2], [2, 2], [4, 4]], dtype=np.float64)
    r = project(bounds, ranks=2, chunk=1, window=10, token_s=0.0, step_s=1.0)
    assert (r["eval_s"], r["critical_path_s"], r["work_s"]) == (6.0, 4.0, 12.0)


def _row(run_id: str, contender: str, device: str, status: str = "ok", time_ms: float | None = 2.0) -> dict:
    machine = {"gpu": "NVIDIA H100 80GB HBM3", "cpu": "Xeon"} if device == "cuda" else {"gpu": "n/a", "cpu": "Xeon"}
    return {"bench": "lora_ttt", "run_id": run_id, "case": "D4_T8_d16_r4", "contender": contender, "device": device,
            "status": status, "time_ms": time_ms, "provenance": machine}


def test_per_token_times_come_from_the_latest_bench_run_and_say_where_they_were_measured(tmp_path, capsys):
    tsv = tmp_path / "b.tsv"
    tsv.write_text("batch\tmin_len\tmax_len\n1\t10\t20\n782\t3000\t9000\n")
    write_results([_row("gpu-run", "pgolf_triton", "cuda", time_ms=0.5)], tmp_path)
    write_results([_row("cpu-run", "record_bmm_adamw", "cpu", time_ms=3.2),
                   _row("cpu-run", "grouped_mm_adamw", "cpu", status="unavailable", time_ms=None),
                   _row("cpu-run", "pgolf_triton", "cpu", time_ms=6.4)], tmp_path)
    bench = str(tmp_path / "lora_ttt.jsonl")
    costs = costs_from_bench(bench, scale=2.0)  # the latest run; the unavailable row is left out
    assert [c.label for c in costs] == ["record_bmm_adamw D4_T8_d16_r4", "pgolf_triton D4_T8_d16_r4"]
    assert costs[1].token_s == 2.0 * 6.4e-3 / (4 * 8) and not costs[1].gpu
    assert costs[1].source.startswith("measured") and "cpu-run" in costs[1].source
    assert main(["--bench", bench, "--tsv", str(tsv), "--step-ms", "1"]) == 0
    out = capsys.readouterr().out
    assert "GPU per-step times: NOT MEASURED" in out and "t_step: 1 ms, assumed" in out and "on cpu (Xeon)" in out
    assert main(["--bench", bench, "--tsv", str(tsv), "--run-id", "gpu-run"]) == 0
    out = capsys.readouterr().out
    assert "NOT MEASURED" not in out and "on cuda (NVIDIA H100 80GB HBM3)" in out
    assert main(["--token-us", "0.01", "--tsv", str(tsv)]) == 0
    assert "NOT MEASURED" in capsys.readouterr().out  # an assumed figure is no GPU measurement either
    with pytest.raises(SystemExit):
        main(["--bench", str(tmp_path / "missing.jsonl"), "--tsv", str(tsv)])
    assert "--bench" in capsys.readouterr().err


def test_the_default_documents_are_the_shared_validation_lengths():
    """``../shared/data/fineweb_val/doc_length_batches.tsv`` (the issue's file): 782 batches of the 50,000
    documents, the 16 longest 30,339-97,114 tokens (RECORD_STACK.md A.2.2)."""
    path = default_tsv()
    if not path.is_file():
        pytest.skip(f"{path} not found (needs ../shared beside the repo)")
    assert path.parts[-4:] == ("shared", "data", "fineweb_val", "doc_length_batches.tsv")
    bounds = read_batches(str(path))
    assert bounds.shape == (782, 2) and tuple(bounds[-1]) == (30339, 97114)
    r = project(bounds, ranks=8, chunk=48, window=2048, token_s=1e-8, step_s=1e-3)
    assert r["critical_path_s"] >= 1e-3 * -(-97114 // 48)  # the longest document's steps, one after another
    assert abs(r["predictions"] / PREDICTIONS - 1) < 0.15


def test_a_real_shard_gives_its_documents_by_bos(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=150)  # 150 documents: batches of 64, 64 and the 22 longest
    stream = np.concatenate([np.concatenate([[1], rng.integers(2, 500, size=n - 1)]) for n in lengths] + [[1]])
    shard = tmp_path / "val_000000.bin"
    write_shard(shard, stream.astype(np.uint16))
    bounds, docs = batches_from_shard(str(shard))
    preds = np.sort(lengths)  # a document predicts up to and including the next BOS: its own length
    assert list(docs) == [64, 64, 22] and int(docs.sum()) == len(lengths)
    assert bounds.tolist() == [[preds[0], preds[63]], [preds[64], preds[127]], [preds[128], preds[-1]]]
    one = project(bounds, ranks=1, chunk=48, window=2048, token_s=1.0, step_s=0.0, docs=docs)
    assert one["work_s"] == sum(batch_seconds(hi, int(d), chunk=48, window=2048, token_s=1.0, step_s=0.0)
                                for (_, hi), d in zip(bounds, docs))
    assert main(["--val-shard", str(shard), "--token-us", "0.01"]) == 0
    assert "150 documents by BOS id 1, 3 batches" in capsys.readouterr().out
