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
    # The record stack's features (RECORD_STACK.md section B); every default is the baseline.
    mlp_activation: str = "relu2"  # relu2 | leaky_relu2 (LeakyReLU(0.5)^2, B.3)
    rope_dims: int = 0  # dims 0..rope_dims-1 of each head rotate (half-split); 0 = the whole head (B.2.3)
    ln_scale: bool = False  # both block norms times 1/sqrt(l+1), l the physical layer (B.4)
    xsa_last_n: int = 0  # XSA (remove each head's own-value component) on the last N layers (B.2.6)
    gate_window: int = 12  # leading embedding dims the SmearGate and the attention gate read
    smear_gate: bool = False  # input-dependent SmearGate with the BOS mask (B.1)
    attn_gate: bool = False  # sparse per-head attention output gate (B.2.7)
    attn_gate_scale: float = 1.0  # s in sigmoid(s * W_g n[0:gate_window]); the record uses 0.5
    skip_gates: bool = False  # U-Net skips as a sigmoid-gated lerp (B.6)
    num_loops: int = 0  # depth recurrence: layers loop_start..loop_end run 1 + num_loops times (B.5)
    loop_start: int = 0
    loop_end: int = 0
    loop_enable_frac: float = 0.0  # training fraction at which the loop switches on (one-way)
    parallel_start_layer: int = 0  # decoder layers with physical index >= this run two lanes; 0 = off (B.7)
    init: str = "baseline"  # baseline | record (orthogonal W_Q, W_K, W_V, W_up; B.9)
    doc_attention: bool = False  # attention never crosses a BOS (B.13)
    max_segment: int = 0  # with doc_attention: segments of at most this many tokens per document; 0 = none
    bos_id: int = 1
    # Parameter dtypes: "fp32" keeps every parameter and buffer in float32 (pgolf); "official"
    # reproduces train_gpt.py's `.bfloat16()` + restore: the token embedding (tied: also the head)
    # and every RoPE `inv_freq` buffer stay bf16, so RoPE positions are computed in bf16 (integers
    # above 256 round to even), and on a CPU the whole forward runs in bf16 from the embedding on.
    dtype_layout: str = "fp32"
    # How the training and scoring loss is computed from the raw logits (pgolf.model.loss):
    # "torch" (softcap in the logits' dtype, then F.cross_entropy in fp32: train_gpt.py's roundings),
    # "fused" (triton_kernels.softcap_ce: softcap in fp32 inside one Triton kernel; CUDA, or the
    # interpreter under TRITON_INTERPRET=1), "auto" (fused where the kernel can run, else torch).
    loss_impl: str = "torch"


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
    # Require every shard folder to hold a pgolf manifest made with data.tokenizer (see
    # pgolf.data.identity); false reads folders without one (official downloads) unverified.
    verify_manifest: bool = True
    # Which tokens a micro-batch gets (pgolf.data.loader): "per_step" (step s reads one chunk of
    # train_batch_tokens + 1 tokens and deals its sequences to ranks and micro-steps, so a step's
    # tokens do not depend on the world size) or "official" (train_gpt.py: every micro-step takes the
    # next world_size spans of local_tokens + 1 tokens from the stream, one per rank).
    token_order: str = "per_step"
    # Accept a validation split that ``pgolf data`` cut to 1 in 10 documents because the corpus had
    # fewer than twice the requested number (its manifest says so). False refuses such data, as the
    # official data script refuses a corpus smaller than its validation split (the baseline preset).
    small_val_split: bool = True


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
    # Per-group Adam betas as "beta1,beta2" ("" = beta1, beta2 above) and decoupled (AdamW) weight
    # decay, lr-scaled like Muon's; the record: betas 0.9,0.99, embed_wd 0.085, scalar_wd 0.02.
    embed_betas: str = ""
    head_betas: str = ""
    scalar_betas: str = ""
    embed_wd: float = 0.0
    head_wd: float = 0.0
    scalar_wd: float = 0.0
    # Global L2 norm clip (0 = off). grad_clip_local: clip each rank's local gradient before the
    # cross-rank average (the record); otherwise the averaged gradient is clipped.
    grad_clip_norm: float = 0.0
    grad_clip_local: bool = False
    # EMA of the weights after every optimiser step (fp32), exported and evaluated; 0 = off.
    ema_decay: float = 0.0


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
    # Time-based schedule (the record): with warmdown_frac > 0 the lr multiplier is 1 until the
    # training fraction reaches 1 - warmdown_frac, then (1 - frac) / warmdown_frac, never below
    # min_lr; frac = elapsed / max_wallclock_seconds (step / iterations without a cap).
    warmdown_frac: float = 0.0
    min_lr: float = 0.0
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
    # Per-tensor-kind k of the sigma rule (SDClip): "attn=13,mlp=11.5,tok_emb=14"; others use clip_sigma.
    sigma_policy: str = ""
    # How matrices are rounded at export: "rtn" (round to nearest) or "gptq" (Hessian-guided, calibrated on
    # gptq_batches training batches inside the wall-clock cap).
    method: str = "rtn"
    gptq_batches: int = 16
    gptq_block: int = 128
    gptq_damp: float = 0.01
    gptq_act_order: bool = True
    # Low-rank correction (LQER) of the lqer_top_k matrices with the largest quantisation error (0: off).
    lqer_top_k: int = 0
    lqer_rank: int = 4
    keep_float_max_numel: int = 65_536
    codec: str = "zlib"  # zlib | zstd | rans
    qat_start_frac: float = -1.0  # < 0: off; 0: from step 0; 0.8: the last 20 % of steps
    qat_surrogate: str = "ste"  # ste | softround
    qat_temperature_start: float = 1.0
    qat_temperature_end: float = 0.05


LOSS_IMPLS = ("torch", "fused", "auto")  # ModelConfig.loss_impl
EVAL_MODES = ("flat", "sliding", "doc")
# Predictors a mode may stack on the model, inner first: "ttt" (LoRA test-time
# training; it adapts the model itself, so it comes first) and "cache" (a neural cache over scored hidden states).
PREDICTORS = ("ttt", "cache")
CACHE_SIMILARITIES = ("dot", "cosine")
CACHE_LAM_RULES = ("fixed", "entropy")


def split_mode(mode: str) -> tuple[str, tuple[str, ...]]:
    """``"flat"`` -> ``("flat", ())``; ``"ttt+cache"`` -> ``("doc", ("ttt", "cache"))``.

    A mode is ``+``-joined names: at most one geometry (:data:`EVAL_MODES`; ``doc`` when none is
    named, the geometry adaptive predictors are made for) and the predictors stacked on the model,
    innermost first. Names are not checked here (:func:`pgolf.config.validate.validate_eval` does).
    """
    names = [n.strip() for n in mode.split("+")]
    geometries = [n for n in names if n in EVAL_MODES]
    return (geometries[0] if geometries else "doc"), tuple(n for n in names if n not in EVAL_MODES)


@dataclass
class EvalConfig:
    """How the final score is computed (:mod:`pgolf.eval`): one or more scoring geometries.

    ``mode`` is a comma-separated list of ``flat`` (non-overlapping windows), ``sliding``
    (window ``window``, stride ``stride``), ``doc`` (per document, chunks of ``chunk`` targets
    with up to ``window`` tokens of the document's prefix) and ``ttt`` (``doc`` chunks scored by
    per-document LoRA test-time training, :class:`TTTConfig`); the first is the reported score.
    """

    mode: str = "flat"
    window: int = 0  # 0: train.seq_len
    stride: int = 64
    chunk: int = 48
    batch_docs: int = 64  # documents side by side for adaptive predictors
    batch_tokens: int = 0  # padded tokens per forward; 0: train.val_batch_size
    bos_id: int = 1
    max_seconds: float = 0.0  # 0: no budget; past it the plain model scores the rest (counted)


TTT_PLACES = ("q", "k", "v", "o", "mlp", "head")


@dataclass
class TTTConfig:
    """Score-first per-document LoRA test-time training (``eval.mode`` ``ttt``, :mod:`pgolf.eval.ttt`).

    Documents go ``eval.batch_docs`` at a time in chunks of ``eval.chunk`` targets with up to
    ``eval.window`` tokens of context. Each document gets adapters of rank ``rank``
    (``delta = alpha / rank * (x A^T) B^T``) at ``places`` (comma-separated from q, k, v, o, mlp,
    head); after each scored chunk (not a document's last) one AdamW step with beta1 = 0.
    ``phases`` > 0 adds global SGD phases on already-scored documents (the record's A.2.7).
    """

    rank: int = 80
    alpha: float = 144.0
    places: str = "q,k,v,o,mlp,head"
    lr: float = 1e-4
    adam_beta2: float = 0.99
    eps: float = 1e-10
    weight_decay: float = 0.5
    warm_start_a: bool = True  # keep A across document batches (B, v and steps are reset)
    impl: str = "auto"  # LoRA kernels: auto | triton | torch
    lora_seed: int = 0  # random A of a fresh adapter set
    phases: int = 0  # global SGD phases (0: off)
    phase_docs: int = 2500  # phase k trains on the first floor(phase_docs * k / phases) scored documents
    phase_lr: float = 1e-3  # cosine from phase_lr to 0 over a phase's chunks
    phase_momentum: float = 0.9
    phase_clip: float = 1.0  # global gradient L2 norm clip (0: off)
    phase_chunk_tokens: int = 32768  # tokens per SGD step (the last chunk of a phase is skipped)


@dataclass
class CacheConfig:
    """The neural cache of the ``cache`` eval modes (:mod:`pgolf.eval.cache`).

    ``p(w) = (1 - lam_t) p_model(w) + lam_t p_cache(w)``, ``p_cache(w)`` proportional to
    ``sum exp(theta * sim(h_t, h_i))`` over the last ``window`` scored positions ``i`` whose next
    token is ``w``. ``lam_rule``: ``fixed`` (``lam_t = lam``) or ``entropy``
    (``lam_t = lam * H_t / log V``, ``H_t`` the model's own entropy at ``t``). ``per_doc``: a cache
    per document (doc geometry; flat and sliding score one stream), else one across documents in
    scoring order. ``pgolf tune-cache`` picks theta, lam and window on training tokens.
    """

    theta: float = 10.0
    lam: float = 0.1
    lam_rule: str = "fixed"
    window: int = 2048  # 0: every scored position
    per_doc: bool = False
    similarity: str = "cosine"
