"""Run a few Muon steps on a fixed problem; used by tests/test_muon.py, alone or under torchrun.

    python tests/dist_muon_worker.py OUT.pt                          # one process
    torchrun --nproc_per_node=2 tests/dist_muon_worker.py OUT.pt     # gloo, CPU

Every rank sees the same gradients (as after DDP's all-reduce). Rank 0 saves the final parameters
and the optimizer state_dict to OUT.pt.
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pgolf.optim.muon import Muon  # noqa: E402

# Banks of 3, 2 and 1 matrices (odd sizes so 2 ranks get unequal shares), one tall, row_norm and
# weight decay on in the second group.
SHAPES = [[(12, 20)] * 3 + [(20, 12)] * 2, [(9, 9)] * 1 + [(12, 20)] * 2]
STEPS = 3


def make_problem():
    gen = torch.Generator().manual_seed(0)
    groups = [[torch.randn(s, generator=gen) for s in shapes] for shapes in SHAPES]
    grads = [[[torch.randn(s, generator=gen) for s in shapes] for shapes in SHAPES] for _ in range(STEPS)]
    return groups, grads


def run(world_size_note: str) -> dict:
    groups, grads = make_problem()
    params = [[torch.nn.Parameter(t.clone()) for t in g] for g in groups]
    opt = Muon([{"params": params[0]},
                {"params": params[1], "row_norm": True, "weight_decay": 0.1, "lr": 0.02}],
               lr=0.04, momentum=0.9, impl="torch")
    for step in range(STEPS):
        for g_params, g_grads in zip(params, grads[step]):
            for p, g in zip(g_params, g_grads):
                p.grad = g.clone()
        opt.param_groups[0]["momentum"] = 0.85 + 0.05 * step  # schedules mutate the groups
        opt.step()
    return {"params": [[p.detach().clone() for p in g] for g in params], "state": opt.state_dict(),
            "world": world_size_note}


def main(out_path: str) -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    result = run(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(result, out_path)
    if dist.is_initialized():
        dist.barrier()  # no rank tears gloo down while another still uses it (a race that aborts the peer)
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
