"""The sections of a run's configuration (typed dataclasses; defaults = the official baseline)."""
from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


@dataclass
class ModelConfig:
    """Shape of the GPT (defaults: the official baseline)."""

    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: int = 2
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    # Parameter dtypes: "fp32" keeps every parameter and buffer in float32 (pgolf); "official"
    # reproduces train_gpt.py's `.bfloat16()` + restore: the token embedding (tied: also the head)
    # and every RoPE `inv_freq` buffer stay bf16, so RoPE positions are computed in bf16 (integers
    # above 256 round to even), and on a CPU the whole forward runs in bf16 from the embedding on.
    dtype_layout: str = "fp32"


@dataclass
class DataConfig:
    """Where tokens come from. Globs follow the official shard naming."""

    train_glob: str = "data/datasets/fineweb10B_sp1024/fineweb_train_*.bin"
    val_glob: str = "data/datasets/fineweb10B_sp1024/fineweb_val_*.bin"
    tokenizer: str = "data/tokenizers/fineweb_1024_bpe.model"
    # Optional per-token byte counts for the validation stream (same length as the val tokens),
    # for tokenizers that transform text; when set it replaces the SentencePiece byte table.
    val_bytes_glob: str = ""
    # Build the embedded demo corpus into ``embedded_dir`` when the globs match nothing.
    embedded_default: bool = False
    embedded_dir: str = "data/embedded"
    embedded_vocab_size: int = 512
    # Which tokens a micro-batch gets (pgolf.data.loader): "per_step" (step s reads one chunk of
    # train_batch_tokens + 1 tokens and deals its sequences to ranks and micro-steps, so a step's
    # tokens do not depend on the world size) or "official" (train_gpt.py: every micro-step takes the
    # next world_size spans of local_tokens + 1 tokens from the stream, one per rank).
    token_order: str = "per_step"


@dataclass
class OptimConfig:
    """Learning rates and optimiser settings (defaults: official ``train_gpt.py``)."""

    embed_lr: float = 0.6
    head_lr: float = 0.008
    tied_embed_lr: float = 0.05
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_backend_steps: int = 5
    # Newton-Schulz coefficient schedule: "quintic" (3.4445, -4.7750, 2.0315) x backend_steps,
    # "polar_express" (arXiv:2505.16932), "polar_express_5", or a JSON list of [a, b, c] triples.
    ns_schedule: str = "quintic"
    muon_weight_decay: float = 0.0
    muon_row_norm: bool = False
    # Newton-Schulz dtype: "auto" (bf16 on CUDA as train_gpt.py, the gradient's dtype elsewhere),
    # "bfloat16" or "float32".
    muon_ns_dtype: str = "auto"
    # True: one Newton-Schulz call per matrix, like train_gpt.py's loop; False: same-shape matrices
    # stacked into one batched call (fewer launches; rounds differently in bf16).
    muon_per_matrix: bool = False
    # Fused Adam: "cuda" (on CUDA only; CPU runs keep torch's default foreach kernels), "always"
    # (wherever the torch build has the fused kernel, CPU included: train_gpt.py's fused=True), "never".
    adam_fused: str = "cuda"
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0


@dataclass
class TrainConfig:
    """The training loop: length, batch, schedule, cadence, checkpoints."""

    seed: int = 1337
    iterations: int = 20000
    train_batch_tokens: int = 524_288
    seq_len: int = 1024
    # Largest number of tokens one rank processes per micro-step; gradient accumulation
    # steps = train_batch_tokens / (world_size * micro_batch_tokens).
    micro_batch_tokens: int = 65_536
    # > 0: micro-batches per optimiser step over all ranks, each rank running
    # global_micro_batches / world_size of them (train_gpt.py: 8, so grad_accum_steps = 8 // world_size
    # whatever train_batch_tokens is); 0: derive the accumulation from micro_batch_tokens.
    global_micro_batches: int = 0
    # Steps run (and then undone) to warm up torch.compile; they never see validation tokens.
    warmup_steps: int = 20
    warmdown_iters: int = 1200
    max_wallclock_seconds: float = 600.0
    val_loss_every: int = 1000
    val_batch_size: int = 524_288
    # Cap on validation tokens for periodic validation (0 = the full split). The final
    # score always uses the full split.
    val_max_tokens: int = 0
    # How the validation score is summed (pgolf.eval): "exact" (per-token NLL summed in float64,
    # every target scored, the short tail window included) or "official" (train_gpt.py: batch-mean
    # losses times token counts, the tail that does not fill a sequence dropped).
    val_sum: str = "exact"
    train_log_every: int = 200
    compile: bool = False
    # Which implementation the accelerated ops use (Muon's Newton-Schulz, QAT's fake-quant
    # linear): "auto" (Triton on CUDA or under TRITON_INTERPRET=1), "triton" or "torch".
    kernels: str = "auto"
    device: str = "auto"
    checkpoint_every: int = 0
    run_dir: str = "runs/latest"
    allow_oversize: bool = False


@dataclass
class QuantConfig:
    """Export quantisation and quantisation-aware training.

    ``policy`` maps parameter-name substrings to bit widths (0 keeps the tensor in float),
    e.g. ``"mlp=5,attn=6,tok_emb=8"``; tensors matching nothing use ``bits``.
    """

    # "pgolf": the per-row quantiser below and the pgolf artifact format; "official_int8":
    # train_gpt.py's int8 export byte for byte (torch.save + zlib level 9, final_model.int8.ptz);
    # bits, policy, scale_rule, codec and QAT do not apply to it.
    scheme: str = "pgolf"
    bits: int = 8
    policy: str = ""
    scale_rule: str = "percentile"  # maxabs | percentile | sigma
    clip_percentile: float = 99.99984
    clip_sigma: float = 12.85
    keep_float_max_numel: int = 65_536
    codec: str = "zlib"  # zlib | zstd | rans
    qat_start_frac: float = -1.0  # < 0: off; 0: from step 0; 0.8: the last 20 % of steps
    qat_surrogate: str = "ste"  # ste | softround
    qat_temperature_start: float = 1.0
    qat_temperature_end: float = 0.05
