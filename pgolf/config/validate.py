"""Checks of a whole run configuration: every value in its domain, before any work starts."""
from __future__ import annotations

import json
import math
from typing import Any

from pgolf.codec import COMPRESSORS
from pgolf.config.sections import ConfigError
from triton_kernels._dispatch import IMPLS
from triton_kernels.fake_quant import RULES, SURROGATES
from triton_kernels.newton_schulz import ns_coefficients


SCHEMES = ("pgolf", "official_int8")
DTYPE_LAYOUTS = ("fp32", "official")
TOKEN_ORDERS = ("per_step", "official")
NS_DTYPES = ("auto", "bfloat16", "float32")
ADAM_FUSED = ("cuda", "always", "never")
VAL_SUMS = ("exact", "official")


def validate_run(cfg: Any, *, tokenizer_vocab: int | None = None) -> None:
    """Reject impossible values of a :class:`pgolf.config.RunConfig` with a :class:`ConfigError`
    naming the key; ``tokenizer_vocab`` (when known) must fit in ``model.vocab_size``."""
    m, t, o, q = cfg.model, cfg.train, cfg.optim, cfg.quant
    positive = {
        "model.vocab_size": m.vocab_size, "model.num_layers": m.num_layers,
        "model.model_dim": m.model_dim, "model.num_heads": m.num_heads,
        "model.num_kv_heads": m.num_kv_heads, "model.mlp_mult": m.mlp_mult,
        "model.logit_softcap": m.logit_softcap, "model.rope_base": m.rope_base,
        "train.iterations": t.iterations, "train.train_batch_tokens": t.train_batch_tokens,
        "train.seq_len": t.seq_len, "train.micro_batch_tokens": t.micro_batch_tokens,
        "train.val_batch_size": t.val_batch_size, "optim.muon_backend_steps": o.muon_backend_steps,
    }
    for key, v in positive.items():
        if not (v > 0) or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"{key} must be positive, got {v}")
    non_negative = {
        "train.warmup_steps": t.warmup_steps, "train.warmdown_iters": t.warmdown_iters,
        "train.max_wallclock_seconds": t.max_wallclock_seconds, "train.val_loss_every": t.val_loss_every,
        "train.val_max_tokens": t.val_max_tokens, "train.train_log_every": t.train_log_every,
        "train.checkpoint_every": t.checkpoint_every, "optim.muon_weight_decay": o.muon_weight_decay,
        "optim.grad_clip_norm": o.grad_clip_norm, "optim.muon_momentum_warmup_steps": o.muon_momentum_warmup_steps,
        "quant.keep_float_max_numel": q.keep_float_max_numel, "train.global_micro_batches": t.global_micro_batches,
    }
    for key, v in non_negative.items():
        if v < 0:
            raise ConfigError(f"{key} must be >= 0, got {v}")
    for key in ("embed_lr", "head_lr", "tied_embed_lr", "matrix_lr", "scalar_lr", "adam_eps"):
        if getattr(o, key) < 0:
            raise ConfigError(f"optim.{key} must be >= 0, got {getattr(o, key)}")
    for key in ("muon_momentum", "muon_momentum_warmup_start", "beta1", "beta2"):
        if not 0.0 <= getattr(o, key) < 1.0:
            raise ConfigError(f"optim.{key} must be in [0, 1), got {getattr(o, key)}")
    if m.model_dim % m.num_heads:
        raise ConfigError(f"model.num_heads={m.num_heads} must divide model.model_dim={m.model_dim}")
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(f"model.num_kv_heads={m.num_kv_heads} must divide model.num_heads={m.num_heads}")
    if (m.model_dim // m.num_heads) % 2:
        raise ConfigError(f"head dim model.model_dim/model.num_heads={m.model_dim // m.num_heads} must be even (RoPE)")
    if t.train_batch_tokens % t.seq_len:
        raise ConfigError(f"train.seq_len={t.seq_len} must divide train.train_batch_tokens={t.train_batch_tokens}")
    if t.micro_batch_tokens % t.seq_len:
        raise ConfigError(f"train.seq_len={t.seq_len} must divide train.micro_batch_tokens={t.micro_batch_tokens}")
    if t.val_batch_size < t.seq_len:
        raise ConfigError(f"train.val_batch_size={t.val_batch_size} must hold one sequence of {t.seq_len}")
    if tokenizer_vocab is not None and m.vocab_size < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's vocab ({tokenizer_vocab})")
    if not 2 <= q.bits <= 8:
        raise ConfigError(f"quant.bits must be in 2..8, got {q.bits}")
    for key, value, allowed in (("quant.scale_rule", q.scale_rule, RULES), ("quant.codec", q.codec, COMPRESSORS),
                                ("quant.qat_surrogate", q.qat_surrogate, SURROGATES),
                                ("train.kernels", t.kernels, IMPLS), ("quant.scheme", q.scheme, SCHEMES),
                                ("model.dtype_layout", m.dtype_layout, DTYPE_LAYOUTS),
                                ("data.token_order", cfg.data.token_order, TOKEN_ORDERS),
                                ("optim.muon_ns_dtype", o.muon_ns_dtype, NS_DTYPES),
                                ("optim.adam_fused", o.adam_fused, ADAM_FUSED),
                                ("train.val_sum", t.val_sum, VAL_SUMS)):
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if t.global_micro_batches and t.train_batch_tokens % (t.global_micro_batches * t.seq_len):
        raise ConfigError(f"train.train_batch_tokens={t.train_batch_tokens} must split into "
                          f"train.global_micro_batches={t.global_micro_batches} micro-batches of whole "
                          f"sequences of train.seq_len={t.seq_len}")
    if q.scheme == "official_int8" and q.qat_start_frac >= 0:
        raise ConfigError("quant.qat_start_frac trains against pgolf's quantiser, but quant.scheme=official_int8 "
                          "exports with train_gpt.py's; set quant.scheme=pgolf for QAT")
    if q.qat_start_frac >= 1.0:
        raise ConfigError(f"quant.qat_start_frac must be < 1 (negative disables QAT), got {q.qat_start_frac}")
    parse_policy(q.policy)
    check_ns_schedule(o.ns_schedule, o.muon_backend_steps)


def parse_policy(policy: str) -> list[tuple[str, int]]:
    """Parse ``"mlp=5,attn=6"`` into ``[("mlp", 5), ("attn", 6)]``; 0 means keep float."""
    rules = []
    for item in filter(None, (s.strip() for s in policy.split(","))):
        pattern, sep, bits = item.partition("=")
        if not sep or not pattern or not bits.strip().isdigit():
            raise ConfigError(f"quant.policy item {item!r} must look like name=bits")
        b = int(bits)
        if b != 0 and not 2 <= b <= 8:
            raise ConfigError(f"quant.policy bits for {pattern!r} must be 0 (float) or 2..8, got {b}")
        rules.append((pattern.strip(), b))
    return rules


def check_ns_schedule(schedule: str, steps: int) -> None:
    """``optim.ns_schedule`` must name a schedule or be a JSON list of ``[a, b, c]`` triples."""
    value: Any = schedule
    if schedule.lstrip().startswith("["):
        try:
            value = json.loads(schedule)
        except json.JSONDecodeError as e:
            raise ConfigError(f"optim.ns_schedule is not a valid JSON list: {e}") from None
    try:
        ns_coefficients(value, steps)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"optim.ns_schedule: {e}") from None
