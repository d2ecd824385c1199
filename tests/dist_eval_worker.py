"""Score a fixed stream with a fixed tiny model in every mode; used by tests/test_eval_distributed.py.

    python tests/dist_eval_worker.py OUT.pt                          # one process
    torchrun --nproc_per_node=2 tests/dist_eval_worker.py OUT.pt     # gloo, CPU

Rank 0 saves, per mode, the global totals, the fallback count and the per-token record.
"""
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pgolf.config import ModelConfig  # noqa: E402
from pgolf.eval.engine import evaluate_geometry, schedule_of  # noqa: E402
from pgolf.eval.geometry import Doc, Flat, Sliding  # noqa: E402
from pgolf.eval.predictor import PlainModel  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402

V, BOS = 40, 1


class Adaptive(PlainModel):
    """The plain model scheduled as an adaptive predictor (one chunk per row, documents in groups)."""

    stateless = False


def main(out_path: str) -> None:
    rank, world = 0, 1
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=V, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    gen = np.random.default_rng(0)
    # documents of very different lengths, so that a balanced split is not a contiguous one
    parts = [np.concatenate([[BOS], gen.integers(2, V, n)]) for n in (90, 5, 40, 7, 66, 3, 25, 12, 51, 9)]
    tokens = torch.from_numpy(np.concatenate(parts).astype(np.int64))
    sidecar = torch.from_numpy(gen.integers(0, 4, len(tokens)))
    out = {}
    for name, geometry, predictor, pack in (("flat", Flat(16), PlainModel, False),
                                            ("sliding", Sliding(16, 5), PlainModel, False),
                                            ("doc", Doc(6, 20, BOS), PlainModel, False),
                                            ("doc_packed", Doc(6, 20, BOS), PlainModel, True),
                                            ("doc_adaptive", Doc(6, 20, BOS), Adaptive, False)):
        r = evaluate_geometry(geometry, predictor(model, torch.device("cpu")), tokens, byte_counts=sidecar,
                              batch_tokens=48, batch_lanes=3, pack_rows=pack, rank=rank, world_size=world,
                              record=True)
        out[name] = {"score": (r.score.nll, r.score.tokens, r.score.bytes), "fallback": r.fallback_tokens,
                     "count": r.record.count, "nll": r.record.nll, "seq": r.record.seq}
    packed = schedule_of(Doc(6, 20, BOS).plan(tokens), tokens, PlainModel(model, torch.device("cpu")), batch_tokens=48,
                         batch_lanes=3, pack_rows=True)
    out["packed_steps"] = sum(int((s.pack_offset > 0).any()) for s in packed.steps)  # rows holding several pieces
    out["world"] = world
    if rank == 0:
        torch.save(out, out_path)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
