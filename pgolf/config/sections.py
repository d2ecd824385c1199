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


@dataclass
class DataConfig:
    """Where tokens come from. Globs follow the official shard naming."""

    train_glob: str = "data/fineweb10B_sp1024/fineweb_train_*.bin"
    val_glob: str = "data/fineweb10B_sp1024/fineweb_val_*.bin"
    tokenizer: str = "data/tokenizers/fineweb_1024_bpe.model"
    # Optional per-token byte counts for the validation stream (same length as the val tokens),
    # for tokenizers that transform text; when set it replaces the SentencePiece byte table.
    val_bytes_glob: str = ""
    # Build the embedded demo corpus into ``embedded_dir`` when the globs match nothing.
    embedded_default: bool = False
    embedded_dir: str = "data/embedded"
    embedded_vocab_size: int = 512
    # Require every shard folder to hold a pgolf manifest made with data.tokenizer (see
    # pgolf.data.identity); false reads folders without one (official downloads) unverified.
    verify_manifest: bool = True


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
    # Steps run (and then undone) to warm up torch.compile; they never see validation tokens.
    warmup_steps: int = 20
    warmdown_iters: int = 1200
    max_wallclock_seconds: float = 600.0
    val_loss_every: int = 1000
    val_batch_size: int = 524_288
    # Cap on validation tokens for periodic validation (0 = the full split). The final
    # score always uses the full split.
    val_max_tokens: int = 0
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
