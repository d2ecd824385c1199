"""Named starting points: ``baseline`` (the official ``train_gpt.py``), ``demo`` (a CPU run on the
embedded corpus), ``gpu-demo``, ``record`` (the 1.0611 record's architecture and training recipe,
RECORD_STACK.md sections B and G, for 8 GPUs) and ``record-tiny`` (the same features at the demo's
size, for a CPU). Each is a nested dict of overrides of the defaults."""
from __future__ import annotations

import json
from typing import Any

from triton_kernels.newton_schulz import POLAR_EXPRESS_5

# The record's Newton-Schulz: the five Polar Express triples with X / (||X||_F + eps), i.e. no
# safety factor -- a custom list gets safety 1.0, the named "polar_express_5" uses 1.02 (B.10).
RECORD_NS_SCHEDULE = json.dumps([list(t) for t in POLAR_EXPRESS_5])

RECORD_FEATURES: dict[str, Any] = {
    "mlp_activation": "leaky_relu2", "ln_scale": True, "smear_gate": True, "attn_gate": True,
    "attn_gate_scale": 0.5, "skip_gates": True, "qk_gain_init": 5.0, "init": "record", "doc_attention": True,
}


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


def _record() -> dict[str, Any]:
    return {
        "name": "record",
        "model": {**RECORD_FEATURES, "vocab_size": 8192, "num_layers": 11, "mlp_mult": 4, "rope_dims": 16,
                  "xsa_last_n": 11, "num_loops": 2, "loop_start": 3, "loop_end": 5, "loop_enable_frac": 0.35,
                  "parallel_start_layer": 8, "max_segment": 2048,
                  # the fused softcapped CE kernel on the GPU (the record's own Triton kernel, B.8)
                  "loss_impl": "auto"},
        "data": {"train_glob": "data/fineweb10B_sp8192/fineweb_train_*.bin",
                 "val_glob": "data/fineweb10B_sp8192/fineweb_val_*.bin",
                 "tokenizer": "data/tokenizers/fineweb_8192_bpe.model"},
        "optim": {"tied_embed_lr": 0.03, "matrix_lr": 0.026, "scalar_lr": 0.02, "muon_momentum": 0.97,
                  "muon_momentum_warmup_start": 0.92, "muon_momentum_warmup_steps": 1500,
                  "ns_schedule": RECORD_NS_SCHEDULE, "muon_weight_decay": 0.095, "muon_row_norm": True,
                  "beta1": 0.9, "beta2": 0.99, "embed_wd": 0.085, "scalar_wd": 0.02, "grad_clip_norm": 0.3,
                  "grad_clip_local": True, "ema_decay": 0.9965},
        "train": {"iterations": 20000, "train_batch_tokens": 786_432, "seq_len": 2048, "micro_batch_tokens": 98_304,
                  "warmup_steps": 20, "warmdown_frac": 0.85, "min_lr": 0.1, "max_wallclock_seconds": 600.0,
                  "val_loss_every": 0, "train_log_every": 500, "compile": True, "run_dir": "runs/record"},
        # RECORD_STACK.md C.3-C.4: GPTQ with SDClip (k per tensor kind), int6 matrices, int7 embedding,
        # 16 calibration batches (inside the cap here), rank-4 LQER on the 3 largest errors.
        "quant": {"bits": 6, "policy": "tok_emb=7", "scale_rule": "sigma", "clip_sigma": 12.85,
                  "sigma_policy": "tok_emb=14.0,mlp=11.5,attn=13.0", "method": "gptq", "gptq_batches": 16,
                  "lqer_top_k": 3, "lqer_rank": 4},
    }


def _record_tiny() -> dict[str, Any]:
    """The record's features and recipe at about the demo's parameter count, on the embedded corpus."""
    d = _demo()
    r = _record()
    d["name"] = "record-tiny"
    d["model"].update({**RECORD_FEATURES, "num_layers": 4, "model_dim": 104, "mlp_mult": 4, "rope_dims": 8,
                       "xsa_last_n": 4, "num_loops": 1, "loop_start": 1, "loop_end": 2, "loop_enable_frac": 0.35,
                       "parallel_start_layer": 3})
    d["optim"] = {**r["optim"], "muon_momentum_warmup_steps": 50, "ema_decay": 0.98}
    d["train"].update({"warmdown_frac": 0.85, "min_lr": 0.1, "warmdown_iters": 0, "run_dir": "runs/record-tiny"})
    return d


def _baseline() -> dict[str, Any]:
    """The official script's behaviour, each switch named (tests/test_official_baseline.py shows the
    training steps, the export and the printed score are bit-identical on a CPU)."""
    return {
        "name": "baseline",
        "model": {"dtype_layout": "official"},
        "data": {"token_order": "official", "small_val_split": False},
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
    "record": _record,
    "record-tiny": _record_tiny,
}
