"""Resolving a run's configuration: preset -> JSON file -> official env names -> ``--set``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from pgolf.config.presets import PRESETS
from pgolf.config.run import RunConfig
from pgolf.config.sections import ConfigError

# Official train_gpt.py environment names -> pgolf keys, so users can carry commands over.
ENV_OVERRIDES: dict[str, str] = {
    "SEED": "train.seed", "ITERATIONS": "train.iterations", "WARMDOWN_ITERS": "train.warmdown_iters",
    "WARMUP_STEPS": "train.warmup_steps", "TRAIN_BATCH_TOKENS": "train.train_batch_tokens",
    "TRAIN_SEQ_LEN": "train.seq_len", "MAX_WALLCLOCK_SECONDS": "train.max_wallclock_seconds",
    "VAL_BATCH_SIZE": "train.val_batch_size", "VAL_LOSS_EVERY": "train.val_loss_every",
    "TRAIN_LOG_EVERY": "train.train_log_every", "QK_GAIN_INIT": "model.qk_gain_init",
    "VOCAB_SIZE": "model.vocab_size", "NUM_LAYERS": "model.num_layers", "NUM_KV_HEADS": "model.num_kv_heads",
    "MODEL_DIM": "model.model_dim", "NUM_HEADS": "model.num_heads", "MLP_MULT": "model.mlp_mult",
    "TIE_EMBEDDINGS": "model.tie_embeddings", "ROPE_BASE": "model.rope_base",
    "LOGIT_SOFTCAP": "model.logit_softcap", "EMBED_LR": "optim.embed_lr", "HEAD_LR": "optim.head_lr",
    "TIED_EMBED_LR": "optim.tied_embed_lr", "TIED_EMBED_INIT_STD": "model.tied_embed_init_std",
    "MATRIX_LR": "optim.matrix_lr", "SCALAR_LR": "optim.scalar_lr", "MUON_MOMENTUM": "optim.muon_momentum",
    "MUON_BACKEND_STEPS": "optim.muon_backend_steps",
    "MUON_MOMENTUM_WARMUP_START": "optim.muon_momentum_warmup_start",
    "MUON_MOMENTUM_WARMUP_STEPS": "optim.muon_momentum_warmup_steps", "BETA1": "optim.beta1",
    "BETA2": "optim.beta2", "ADAM_EPS": "optim.adam_eps", "GRAD_CLIP_NORM": "optim.grad_clip_norm",
    "TOKENIZER_PATH": "data.tokenizer", "RUN_ID": "name",
}


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The official-name variables present in ``environ``, keyed by pgolf key.

    ``DATA_PATH`` sets both shard globs the way ``train_gpt.py`` derives them.
    """
    out = {key: environ[name] for name, key in ENV_OVERRIDES.items() if name in environ}
    if "DATA_PATH" in environ:
        root = environ["DATA_PATH"].rstrip("/")
        out["data.train_glob"] = f"{root}/fineweb_train_*.bin"
        out["data.val_glob"] = f"{root}/fineweb_val_*.bin"
    return out


def load_config(preset: str = "baseline", *, file: str | Path | None = None,
                environ: Mapping[str, str] | None = None, sets: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve preset -> file -> official env names -> ``--set`` items, then validate."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    cfg = RunConfig.from_dict(PRESETS[preset]())
    if file is not None:
        path = Path(file)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object of sections ({{\"train\": {{...}}}}), "
                              f"got a {type(data).__name__}")
        cfg.update(data)
    env_names = {key: name for name, key in ENV_OVERRIDES.items()}
    for key, value in env_overrides(environ or {}).items():
        try:
            cfg.set(key, value)
        except ConfigError as e:
            raise ConfigError(f"{e}, from the environment variable {env_names.get(key, 'DATA_PATH')}") from None
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        cfg.set(key.strip(), value.strip())
    return cfg.validate()
