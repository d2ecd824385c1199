"""The tiny training configuration the end-to-end tests share: a 2-layer, width-32 model on a data folder."""
from __future__ import annotations

from pathlib import Path


def tiny_values(data: Path, run_dir: Path, *, train_glob: str = "train_*.bin", val_glob: str = "val_*.bin",
                tokenizer: str = "tokenizer.model", vocab_size: int = 512, **extra) -> dict[str, object]:
    """``{key: value}`` of a few-step CPU run on the shards in ``data`` (an embedded build by default),
    writing to ``run_dir``; ``extra`` (dotted keys) overrides or adds."""
    values: dict[str, object] = {
        "data.train_glob": f"{data}/{train_glob}", "data.val_glob": f"{data}/{val_glob}",
        "data.tokenizer": f"{data}/{tokenizer}", "data.embedded_default": "false",
        "model.vocab_size": vocab_size, "model.num_layers": 2, "model.model_dim": 32, "model.num_heads": 2,
        "model.num_kv_heads": 1, "train.seq_len": 32, "train.train_batch_tokens": 256,
        "train.micro_batch_tokens": 256, "train.iterations": 4, "train.val_loss_every": 0,
        "train.val_max_tokens": 2048, "train.val_batch_size": 2048, "train.checkpoint_every": 2,
        "train.max_wallclock_seconds": 0, "train.warmdown_iters": 2, "train.train_log_every": 1,
        "train.run_dir": str(run_dir), "optim.muon_momentum_warmup_steps": 2, "train.kernels": "torch",
    }
    values.update(extra)
    return values


def tiny_sets(data: Path, run_dir: Path, **kwargs) -> list[str]:
    """:func:`tiny_values` as ``KEY=VALUE`` strings for ``load_config(sets=...)``."""
    return [f"{k}={v}" for k, v in tiny_values(data, run_dir, **kwargs).items()]


def train_steps(model, opts, batches) -> list[float]:
    """One optimiser step of ``model`` (``opts``: pgolf's optimiser set) per ``(x, y)`` batch; the
    losses, in order."""
    losses = []
    for step, (x, y) in enumerate(batches):
        opts.zero_grad()
        loss = model(x, y)
        loss.backward()
        opts.schedule(step, 0.0)
        opts.step()
        losses.append(loss.item())
    return losses
