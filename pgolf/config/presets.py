"""Named starting points: ``baseline`` (the official ``train_gpt.py``), ``demo`` (a CPU run on the
embedded corpus) and ``gpu-demo``. Each is a nested dict of overrides of the defaults."""
from __future__ import annotations

from typing import Any


def _demo() -> dict[str, Any]:
    return {
        "name": "demo",
        "model": {"vocab_size": 512, "num_layers": 4, "model_dim": 128, "num_heads": 4, "num_kv_heads": 2,
                  "mlp_mult": 2, "tied_embed_init_std": 0.02},
        "data": {"train_glob": "data/embedded/train_*.bin", "val_glob": "data/embedded/val_*.bin",
                 "tokenizer": "data/embedded/tokenizer.model", "embedded_default": True},
        "optim": {"tied_embed_lr": 0.03, "matrix_lr": 0.03, "scalar_lr": 0.03, "muon_momentum_warmup_steps": 50},
        "train": {"iterations": 300, "train_batch_tokens": 8192, "seq_len": 256, "micro_batch_tokens": 8192,
                  "warmup_steps": 0, "warmdown_iters": 100, "max_wallclock_seconds": 360.0,
                  "val_loss_every": 100, "val_batch_size": 16384, "val_max_tokens": 65536,
                  "train_log_every": 25, "checkpoint_every": 100, "run_dir": "runs/demo"},
        # The demo's matrices are small: quantise every one of them, so the export is real.
        "quant": {"keep_float_max_numel": 4096},
    }


def _gpu_demo() -> dict[str, Any]:
    d = _demo()
    d["name"] = "gpu-demo"
    d["model"].update({"num_layers": 6, "model_dim": 256, "num_heads": 4, "num_kv_heads": 2})
    d["train"].update({"iterations": 1000, "train_batch_tokens": 65536, "micro_batch_tokens": 65536,
                       "seq_len": 512, "warmdown_iters": 300, "val_loss_every": 250, "compile": True,
                       "warmup_steps": 5, "run_dir": "runs/gpu-demo"})
    return d


def _baseline() -> dict[str, Any]:
    """The official script's behaviour, each switch named (tests/test_official_baseline.py shows the
    training steps, the export and the printed score are bit-identical on a CPU)."""
    return {
        "name": "baseline",
        "model": {"dtype_layout": "official"},
        "data": {"token_order": "official"},
        "optim": {"muon_ns_dtype": "bfloat16", "muon_per_matrix": True, "adam_fused": "always"},
        # kernels=torch: Newton-Schulz as torch matmuls (the official order of bf16 roundings),
        # not the Triton kernel, whose fp32 accumulator rounds once less.
        "train": {"global_micro_batches": 8, "val_sum": "official", "kernels": "torch"},
        "quant": {"scheme": "official_int8"},
    }


PRESETS: dict[str, Any] = {
    "baseline": _baseline,
    "demo": _demo,
    "gpu-demo": _gpu_demo,
}
