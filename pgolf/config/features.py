"""Checks of the record-stack options (model features and the record's training recipe): every
combination that cannot work is rejected with the key named, before any work starts."""
from __future__ import annotations

from typing import Any

from pgolf.config.sections import ConfigError, ModelConfig

MLP_ACTIVATIONS = ("relu2", "leaky_relu2")
INITS = ("baseline", "record")


def parse_betas(key: str, text: str, default: tuple[float, float]) -> tuple[float, float]:
    """``"0.9,0.99"`` -> ``(0.9, 0.99)``; ``""`` -> ``default``; each beta must be in [0, 1)."""
    if not text.strip():
        return default
    parts = text.split(",")
    try:
        betas = tuple(float(p) for p in parts)
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"{key} must be two betas in [0, 1) as 'beta1,beta2', got {text!r}")
    return betas  # type: ignore[return-value]


def check_model_features(m: ModelConfig) -> None:
    """The model options of RECORD_STACK.md section B against each other and the shape."""
    head_dim = m.model_dim // m.num_heads
    if m.mlp_activation not in MLP_ACTIVATIONS:
        raise ConfigError(f"model.mlp_activation must be one of {', '.join(MLP_ACTIVATIONS)}, got {m.mlp_activation!r}")
    if m.init not in INITS:
        raise ConfigError(f"model.init must be one of {', '.join(INITS)}, got {m.init!r}")
    if m.rope_dims < 0 or m.rope_dims % 2 or m.rope_dims > head_dim:
        raise ConfigError(f"model.rope_dims={m.rope_dims} must be even and in 0..head dim ({head_dim}); "
                          f"0 rotates the whole head")
    if not 0 <= m.xsa_last_n <= m.num_layers:
        raise ConfigError(f"model.xsa_last_n={m.xsa_last_n} must be in 0..model.num_layers ({m.num_layers})")
    if (m.smear_gate or m.attn_gate) and not 1 <= m.gate_window <= m.model_dim:
        raise ConfigError(f"model.gate_window={m.gate_window} must be in 1..model.model_dim ({m.model_dim})")
    if m.num_loops < 0:
        raise ConfigError(f"model.num_loops must be >= 0, got {m.num_loops}")
    if m.num_loops:
        if not 0 <= m.loop_start <= m.loop_end < m.num_layers:
            raise ConfigError(f"model.loop_start={m.loop_start} .. model.loop_end={m.loop_end} must be a layer "
                              f"range inside 0..{m.num_layers - 1} (model.num_layers={m.num_layers})")
        if not 0.0 <= m.loop_enable_frac < 1.0:
            raise ConfigError(f"model.loop_enable_frac must be in [0, 1), got {m.loop_enable_frac}")
    if m.parallel_start_layer < 0 or m.parallel_start_layer >= m.num_layers:
        raise ConfigError(f"model.parallel_start_layer={m.parallel_start_layer} must be in 1..{m.num_layers - 1} "
                          f"(the last layer), or 0 for off")
    if m.parallel_start_layer and m.num_loops and m.parallel_start_layer <= m.loop_end:
        raise ConfigError(f"model.parallel_start_layer={m.parallel_start_layer} must be after the looped range "
                          f"(model.loop_end={m.loop_end}): a looped layer cannot rejoin a single stream")
    if m.max_segment < 0 or (m.max_segment and not m.doc_attention):
        raise ConfigError(f"model.max_segment={m.max_segment} needs model.doc_attention=true (and must be >= 0)")
    if not 0 <= m.bos_id < m.vocab_size:
        raise ConfigError(f"model.bos_id={m.bos_id} must be a token id below model.vocab_size={m.vocab_size}")


def check_recipe(o: Any, t: Any) -> None:
    """The record's optimiser and schedule options (``o``: OptimConfig, ``t``: TrainConfig)."""
    for group in ("embed", "head", "scalar"):
        parse_betas(f"optim.{group}_betas", getattr(o, f"{group}_betas"), (o.beta1, o.beta2))
        if getattr(o, f"{group}_wd") < 0:
            raise ConfigError(f"optim.{group}_wd must be >= 0, got {getattr(o, f'{group}_wd')}")
    if not 0.0 <= o.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay must be in [0, 1) (0 = off), got {o.ema_decay}")
    if not 0.0 <= t.warmdown_frac <= 1.0:
        raise ConfigError(f"train.warmdown_frac must be in [0, 1] (0 = the official step warmdown), "
                          f"got {t.warmdown_frac}")
    if not 0.0 <= t.min_lr < 1.0:
        raise ConfigError(f"train.min_lr must be in [0, 1), got {t.min_lr}")
