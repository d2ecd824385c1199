"""One step's gradients under local clipping, for tests/test_record_recipe.py (run by torchrun, gloo).

    torchrun --nproc_per_node=2 tests/dist_clip_worker.py OUT_DIR

Each rank computes the loss of a tiny model on its own batch (no DDP), then runs
``Optimizers.step`` with ``grad_clip_local`` and no optimisers, so only the clip and the rank
average act. Rank r saves its local gradients, the gradients after the step and the clip norm to
OUT_DIR/rank{r}.pt.
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pgolf.config import ModelConfig, load_config  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402
from pgolf.optim.optimizers import Optimizers  # noqa: E402

CLIP = 0.05


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    cfg = load_config("baseline", sets=[f"optim.grad_clip_norm={CLIP}", "optim.grad_clip_local=true"])
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    opts = Optimizers(model, cfg.optim, cfg.train)
    assert opts.averages_gradients
    g = torch.Generator().manual_seed(100 + 7 * rank)
    x = torch.randint(0, 64, (2 + 2 * rank, 16), generator=g)
    model(x, torch.roll(x, -1, 1)).backward()
    local = [p.grad.clone() for p in opts.params]
    opts.all = []  # observe the gradient handling alone
    opts.step()
    torch.save({"clip": CLIP, "local": local, "stepped": [p.grad.clone() for p in opts.params]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
