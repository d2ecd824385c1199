"""Under torchrun each rank scores its share of the steps; the totals do not depend on the number
of ranks: two gloo processes give the same bits as one, in every mode (doc rows packed or not)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _ports import free_port

HERE = Path(__file__).resolve().parent


@pytest.mark.distributed
def test_two_ranks_give_the_same_totals_as_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    worker = str(HERE / "dist_eval_worker.py")
    subprocess.run([sys.executable, worker, str(tmp_path / "one.pt")], env=env, check=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", worker, str(tmp_path / "two.pt")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt", weights_only=False), torch.load(tmp_path / "two.pt", weights_only=False)
    assert (one["world"], two["world"]) == (1, 2)
    assert one["packed_steps"] > 0  # doc_packed really puts several documents' pieces in one forward row
    for mode in ("flat", "sliding", "doc", "doc_packed", "doc_adaptive"):
        assert one[mode]["score"] == two[mode]["score"], mode  # float64 NLL bit for bit, tokens, bytes
        assert (two[mode]["count"][1:] == 1).all() and two[mode]["count"][0] == 0
        assert np.array_equal(one[mode]["nll"], two[mode]["nll"], equal_nan=True)
        assert np.array_equal(one[mode]["seq"], two[mode]["seq"])
