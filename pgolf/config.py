"""Typed run configuration, named presets, and the three ways to override them.

A run is described by one :class:`RunConfig` made of sections (``model``, ``data``, ``optim``,
``train``, ``quant``). Values are resolved in this order, later winning:

1. a named preset (:data:`PRESETS`: ``demo`` for a CPU, ``gpu-demo``, ``baseline`` = official);
2. a JSON file (``--config run.json``), holding a nested dict of sections;
3. environment variables with the official ``train_gpt.py`` names (``ITERATIONS=...``), see
   :data:`ENV_OVERRIDES`; they are read only by the CLI entry point and passed in here;
4. ``--set section.key=value`` (or ``--set key=value`` when ``key`` names one field only).

Every value is parsed to its field's type and the whole config is validated by
:meth:`RunConfig.validate` before any work starts; errors raise :class:`ConfigError` with a
message naming the key.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


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


@dataclass
class RunConfig:
    """One whole run."""

    name: str = "pgolf"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        cfg = cls()
        cfg.update(d)
        return cfg

    def update(self, d: Mapping[str, Any]) -> None:
        """Apply a nested dict of overrides (``{"model": {"num_layers": 4}, "name": "x"}``)."""
        for key, value in d.items():
            if key in _SECTIONS:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"config section {key!r} must be a mapping, got {value!r}")
                for sub, v in value.items():
                    self.set(f"{key}.{sub}", v)
            else:
                self.set(key, value)

    def set(self, key: str, value: Any) -> None:
        """Set one field by ``section.key`` or by an unambiguous bare ``key``; parses strings."""
        section, name = resolve_key(key)
        target = self if section is None else getattr(self, section)
        ftype = _field_types(type(target))[name]
        setattr(target, name, parse_value(f"{key}", value, ftype))

    # --------------------------------------------------------------------- validation
    def validate(self, *, tokenizer_vocab: int | None = None) -> "RunConfig":
        """Reject impossible values with a message naming the key. Returns ``self``."""
        m, t, o, q = self.model, self.train, self.optim, self.quant
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
            "quant.keep_float_max_numel": q.keep_float_max_numel,
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
        if q.scale_rule not in ("maxabs", "percentile", "sigma"):
            raise ConfigError(f"quant.scale_rule must be maxabs, percentile or sigma, got {q.scale_rule!r}")
        if q.codec not in ("zlib", "zstd", "rans"):
            raise ConfigError(f"quant.codec must be zlib, zstd or rans, got {q.codec!r}")
        if q.qat_surrogate not in ("ste", "softround"):
            raise ConfigError(f"quant.qat_surrogate must be ste or softround, got {q.qat_surrogate!r}")
        if t.kernels not in ("auto", "triton", "torch"):
            raise ConfigError(f"train.kernels must be auto, triton or torch, got {t.kernels!r}")
        if q.qat_start_frac >= 1.0:
            raise ConfigError(f"quant.qat_start_frac must be < 1 (negative disables QAT), got {q.qat_start_frac}")
        parse_policy(q.policy)
        _check_ns_schedule(o.ns_schedule, o.muon_backend_steps)
        return self

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimiser step so the global batch does not depend on world size."""
        t = self.train
        per_rank = t.train_batch_tokens // world_size
        if t.train_batch_tokens % world_size or per_rank % t.seq_len:
            raise ConfigError(
                f"train.train_batch_tokens={t.train_batch_tokens} must split into whole sequences of "
                f"{t.seq_len} over world_size={world_size}")
        accum = max(1, math.ceil(per_rank / t.micro_batch_tokens))
        while per_rank % accum or (per_rank // accum) % t.seq_len:
            accum += 1
        return accum


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


def _check_ns_schedule(schedule: str, steps: int) -> None:
    from triton_kernels.newton_schulz import ns_coefficients

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


_SECTIONS = ("model", "data", "optim", "train", "quant")


def _field_types(cls: type) -> dict[str, type]:
    hints = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: hints.get(str(f.type), object) for f in dataclasses.fields(cls)
            if f.name not in _SECTIONS}


def _section_classes() -> dict[str, type]:
    return {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
            "train": TrainConfig, "quant": QuantConfig}


def resolve_key(key: str) -> tuple[str | None, str]:
    """Map ``"train.iterations"`` or the bare ``"iterations"`` to ``("train", "iterations")``."""
    sections = _section_classes()
    if "." in key:
        section, _, name = key.partition(".")
        if section not in sections:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; sections: {', '.join(sections)}")
        if name not in _field_types(sections[section]):
            known = ", ".join(sorted(_field_types(sections[section])))
            raise ConfigError(f"unknown config key {key!r}; {section} has: {known}")
        return section, name
    if key in _field_types(RunConfig):
        return None, key
    owners = [s for s, cls in sections.items() if key in _field_types(cls)]
    if len(owners) == 1:
        return owners[0], key
    if owners:
        raise ConfigError(f"config key {key!r} is ambiguous; write one of: {', '.join(f'{s}.{key}' for s in owners)}")
    raise ConfigError(f"unknown config key {key!r}")


def parse_value(key: str, value: Any, ftype: type) -> Any:
    """Convert ``value`` (often a string from the CLI or environment) to ``ftype``."""
    try:
        if ftype is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if ftype is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
        if ftype is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if ftype is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value {value!r} for {key} (expected {ftype.__name__})") from None
    return value


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


PRESETS: dict[str, Any] = {
    "baseline": lambda: {"name": "baseline"},
    "demo": _demo,
    "gpu-demo": _gpu_demo,
}


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
        cfg.update(data)
    for key, value in env_overrides(environ or {}).items():
        cfg.set(key, value)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        cfg.set(key.strip(), value.strip())
    return cfg.validate()
