"""What may change when a run is resumed.

A checkpoint is the state of one configuration; continuing it under another would silently
ignore some new values (a seed, a learning rate already baked into the optimiser state) and
apply others mid-run (a sequence length). So ``--resume`` compares the new configuration with
the checkpoint's and accepts differences only in :data:`RESUMABLE`: how long to run, how often
to log, validate and checkpoint, where the files are (their contents are checked separately:
the loader's shard fingerprint, the tokenizer's SHA-256) and how the work is executed.
"""
from __future__ import annotations

from typing import Any, Mapping

RESUMABLE = frozenset({
    "name", "train.iterations", "train.max_wallclock_seconds", "train.train_log_every", "train.val_loss_every",
    "train.val_max_tokens", "train.val_batch_size", "train.checkpoint_every", "train.run_dir",
    "train.allow_oversize", "train.compile", "train.warmup_steps", "train.device", "train.kernels", "model.loss_impl",
    "data.train_glob",
    "data.tokenizer", "data.embedded_default", "data.embedded_dir", "data.verify_manifest",
})


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key (saved -> new)"`` for every key outside :data:`RESUMABLE` whose value differs
    between two ``RunConfig.to_dict()`` results (a key missing on one side counts as different)."""
    a, b = _flat(saved), _flat(new)
    return [f"{k} ({a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r})" for k in sorted(set(a) | set(b))
            if k not in RESUMABLE and a.get(k, ...) != b.get(k, ...)]
