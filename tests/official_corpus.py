"""A small deterministic corpus for running pgolf and the official ``train_gpt.py`` side by side.

Documents are sentences of common English words drawn by ``random.Random(seed)`` (the Mersenne
Twister and ``choice``/``randint`` give the same draws on every CPython 3), so the shards built
from them with the official 1024-piece tokenizer are the same on every machine. Used by
``tests/test_official_baseline.py``; the golden numbers there were computed from these shards.
"""
from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "the of and to in is was for that with as on by at from his her they were are this which be "
    "had not have it an or one all their there been has would when who will more no if out so said "
    "what up its about into than them can only other new some could time these two may then do first "
    "any my now such like our over man me even most made after also did many before must through back "
    "years where much your way well down should because each just those people how too little state good "
    "very make world still own see men work long get here between both life being under never day same "
    "another know while last might us great old year off come since against go came right used take three "
    "river stone garden window morning evening bread water light music letter table mountain city road"
).split()


def documents(num_docs: int, *, seed: int = 16) -> list[str]:
    """``num_docs`` documents of 3-12 sentences of 4-14 words each."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        sentences = []
        for _ in range(rng.randint(3, 12)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            sentences.append(" ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!")))
        docs.append(" ".join(sentences))
    return docs


def build_official_shards(out_dir: str | Path, tokenizer_path: str | Path) -> Path:
    """Shards ``fineweb_{train,val}_000000.bin`` in ``out_dir`` (first 60 documents validation)."""
    from pgolf.data.build import build_dataset

    build_dataset(documents(1200), out_dir, tokenizer_path=tokenizer_path, vocab_size=1024, num_val_docs=60,
                  progress=False)
    return Path(out_dir)


def export_probe_state_dict():
    """``(state dict, roles)`` touching every branch of the official int8 exporter: a bf16
    embedding (per-row, floor scale 1/127), a large fp32 matrix with rows clipped above 1 and an
    all-zero row, a 3-D tensor (per-tensor scale), kept fp32 control and fp16-stored small tensors,
    a small fp16 tensor and an int64 one."""
    import torch

    g = torch.Generator().manual_seed(16)
    fc = torch.randn(768, 96, generator=g) * 0.05
    fc[::3] *= 80.0
    fc[5] = 0.0
    state = {
        "tok_emb.weight": (torch.randn(1024, 96, generator=g) * 0.02).bfloat16(),
        "blocks.0.attn_scale": torch.rand(96, generator=g) + 0.5,
        "blocks.0.attn.c_q.weight": torch.randn(96, 96, generator=g) * 0.1,
        "blocks.0.mlp.fc.weight": fc,
        "extra.cube": torch.randn(50, 40, 40, generator=g),
        "extra.half": torch.randn(10, generator=g).half(),
        "step": torch.tensor(20),
    }
    roles = {"tok_emb.weight": "embed", "blocks.0.attn_scale": "control", "blocks.0.attn.c_q.weight": "matrix",
             "blocks.0.mlp.fc.weight": "matrix"}
    return state, roles
