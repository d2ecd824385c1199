"""Checks of a whole run configuration: every value in its domain, before any work starts."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from pgolf.codec import COMPRESSORS
from pgolf.config.features import check_model_features, check_recipe
from pgolf.config.sections import (CACHE_LAM_RULES, CACHE_SIMILARITIES, EVAL_MODES, LOSS_IMPLS, PREDICTORS,
                                   TTT_PLACES, ConfigError, split_mode)
from triton_kernels._dispatch import IMPLS
from triton_kernels.fake_quant import RULES, SURROGATES
from triton_kernels.newton_schulz import ns_coefficients

QUANT_METHODS = ("rtn", "gptq")


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
    for section in ("model", "data", "optim", "train", "quant"):
        for f in dataclasses.fields(getattr(cfg, section)):
            v = getattr(getattr(cfg, section), f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{section}.{f.name} must be a finite number, got {v}")
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
        "model.tied_embed_init_std": m.tied_embed_init_std,
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
    if tokenizer_vocab is not None and m.vocab_size != tokenizer_vocab:
        raise ConfigError(f"model.vocab_size={m.vocab_size} does not match the tokenizer's vocab ({tokenizer_vocab}); "
                          f"set model.vocab_size={tokenizer_vocab} or use the matching data.tokenizer")
    if not 2 <= q.bits <= 8:
        raise ConfigError(f"quant.bits must be in 2..8, got {q.bits}")
    for key, value, allowed in (("quant.scale_rule", q.scale_rule, RULES), ("quant.codec", q.codec, COMPRESSORS),
                                ("quant.qat_surrogate", q.qat_surrogate, SURROGATES),
                                ("train.kernels", t.kernels, IMPLS), ("quant.scheme", q.scheme, SCHEMES),
                                ("model.dtype_layout", m.dtype_layout, DTYPE_LAYOUTS),
                                ("model.loss_impl", m.loss_impl, LOSS_IMPLS),
                                ("data.token_order", cfg.data.token_order, TOKEN_ORDERS),
                                ("optim.muon_ns_dtype", o.muon_ns_dtype, NS_DTYPES),
                                ("optim.adam_fused", o.adam_fused, ADAM_FUSED),
                                ("train.val_sum", t.val_sum, VAL_SUMS)):
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if not 0.0 < q.clip_percentile <= 100.0:
        raise ConfigError(f"quant.clip_percentile must be in (0, 100], got {q.clip_percentile}")
    for key in ("clip_sigma", "qat_temperature_start", "qat_temperature_end"):
        if not getattr(q, key) > 0:
            raise ConfigError(f"quant.{key} must be > 0, got {getattr(q, key)}")
    if not 0 <= t.seed < 2**32:
        raise ConfigError(f"train.seed must be in 0..{2**32 - 1} (numpy's seed range), got {t.seed}")
    if not t.run_dir.strip():
        raise ConfigError("train.run_dir must name a folder, got an empty value (it would write into the current "
                          "folder); e.g. train.run_dir=runs/latest")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device):
        raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {t.device!r}")
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
    parse_sigma_policy(q.sigma_policy)
    if q.method not in QUANT_METHODS:
        raise ConfigError(f"quant.method must be one of {', '.join(QUANT_METHODS)}, got {q.method!r}")
    for key, v in (("quant.gptq_batches", q.gptq_batches), ("quant.gptq_block", q.gptq_block),
                   ("quant.lqer_rank", q.lqer_rank)):
        if v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if not (q.gptq_damp > 0 and math.isfinite(q.gptq_damp)):
        raise ConfigError(f"quant.gptq_damp must be a positive number, got {q.gptq_damp}")
    if q.lqer_top_k < 0:
        raise ConfigError(f"quant.lqer_top_k must be >= 0, got {q.lqer_top_k}")
    check_model_features(m)
    check_recipe(o, t)
    check_ns_schedule(o.ns_schedule, o.muon_backend_steps)
    validate_eval(cfg)
    validate_ttt(cfg)
    validate_cache(cfg)


def validate_eval(cfg: Any) -> None:
    """``eval.*``: known modes, positive sizes, the stride (sliding) and chunk (doc) within the window, a BOS id
    within the model's vocabulary."""
    e = cfg.eval
    modes = cfg.eval_modes()
    if not modes or len(set(modes)) != len(modes):
        raise ConfigError(f"eval.mode must be a comma-separated list of distinct modes, got {e.mode!r}")
    for mode in modes:
        names = [n.strip() for n in mode.split("+")]
        unknown = [n for n in names if n not in EVAL_MODES + PREDICTORS]
        if unknown or sum(n in EVAL_MODES for n in names) > 1 or len(set(names)) != len(names):
            raise ConfigError(f"eval.mode must be a comma-separated list of modes; the item {mode!r} must be one "
                              f"geometry ({', '.join(EVAL_MODES)}; doc when left out) and/or distinct predictors "
                              f"({', '.join(PREDICTORS)}) joined by '+'"
                              + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    geometries = [split_mode(m)[0] for m in modes]
    for key in ("stride", "chunk", "batch_docs"):
        if getattr(e, key) <= 0:
            raise ConfigError(f"eval.{key} must be positive, got {getattr(e, key)}")
    for key in ("window", "batch_tokens", "max_seconds"):
        if getattr(e, key) < 0:
            raise ConfigError(f"eval.{key} must be >= 0, got {getattr(e, key)}")
    if not 0 <= e.bos_id < cfg.model.vocab_size:
        raise ConfigError(f"eval.bos_id={e.bos_id} must be a token id below model.vocab_size={cfg.model.vocab_size}")
    window = cfg.eval_window()
    for key, mode in (("stride", "sliding"), ("chunk", "doc")):
        if mode in geometries and getattr(e, key) > window:
            raise ConfigError(f"eval.{key}={getattr(e, key)} must not exceed the window ({window}: eval.window, "
                              f"or train.seq_len when it is 0)")


def ttt_places(places: str) -> list[str]:
    """The adapter places of ``ttt.places`` (comma-separated, known, distinct, at least one)."""
    names = [p.strip() for p in places.split(",") if p.strip()]
    unknown = [p for p in names if p not in TTT_PLACES]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError(f"ttt.places must be a comma-separated list of distinct places from {', '.join(TTT_PLACES)}, "
                          f"got {places!r}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return names


def validate_ttt(cfg: Any) -> None:
    """``ttt.*``: known places, sane optimizer values, and (when a mode uses ``ttt``) a rank within every
    adapted layer's input width."""
    t, m = cfg.ttt, cfg.model
    ttt_places(t.places)
    width = m.model_dim  # every place's adapter reads a model_dim-wide input
    uses_ttt = any("ttt" in split_mode(mode)[1] for mode in cfg.eval_modes())
    if t.rank < 1 or (uses_ttt and t.rank > width):
        raise ConfigError(f"ttt.rank={t.rank} must be in 1..{width} (model.model_dim, the width of the adapted "
                          f"layers' input): a LoRA rank cannot exceed the layer width")
    for key in ("alpha", "adam_beta2", "eps", "lr", "weight_decay", "phase_lr", "phase_momentum", "phase_clip"):
        v = getattr(t, key)
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"ttt.{key} must be a finite number >= 0, got {v}")
    if not t.adam_beta2 < 1:
        raise ConfigError(f"ttt.adam_beta2 must be < 1, got {t.adam_beta2}")
    if t.impl not in ("auto", "triton", "torch"):
        raise ConfigError(f"ttt.impl must be auto, triton or torch, got {t.impl!r}")
    for key in ("phases", "phase_docs"):
        if getattr(t, key) < 0:
            raise ConfigError(f"ttt.{key} must be >= 0, got {getattr(t, key)}")
    if t.phase_chunk_tokens < 2:
        raise ConfigError(f"ttt.phase_chunk_tokens must be >= 2, got {t.phase_chunk_tokens}")


def validate_cache(cfg: Any) -> None:
    """``cache.*``: theta > 0 and finite, lam in [0, 1), window >= 0, a known similarity and lam rule."""
    c = cfg.cache
    if not (c.theta > 0 and math.isfinite(c.theta)):
        raise ConfigError(f"cache.theta must be a finite number > 0, got {c.theta}")
    if not 0.0 <= c.lam < 1.0:
        raise ConfigError(f"cache.lam must be in [0, 1) (1 would give tokens missing from the cache probability 0), "
                          f"got {c.lam}")
    if c.window < 0:
        raise ConfigError(f"cache.window must be >= 0 (0: every scored position), got {c.window}")
    for key, value, allowed in (("similarity", c.similarity, CACHE_SIMILARITIES),
                                ("lam_rule", c.lam_rule, CACHE_LAM_RULES)):
        if value not in allowed:
            raise ConfigError(f"cache.{key} must be one of {', '.join(allowed)}, got {value!r}")


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


def parse_sigma_policy(policy: str) -> list[tuple[str, float]]:
    """Parse ``"attn=13,mlp=11.5"`` into ``[("attn", 13.0), ("mlp", 11.5)]`` (each k > 0, finite)."""
    rules = []
    for item in filter(None, (s.strip() for s in policy.split(","))):
        pattern, sep, value = item.partition("=")
        try:
            k = float(value)
        except ValueError:
            k = float("nan")
        if not sep or not pattern.strip() or not (k > 0 and math.isfinite(k)):
            raise ConfigError(f"quant.sigma_policy item {item!r} must look like name=k with k > 0")
        rules.append((pattern.strip(), k))
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
