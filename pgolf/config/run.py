"""The whole run's configuration, and how a key or a string value maps onto it."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from pgolf.config.sections import (CacheConfig, ConfigError, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                                   QuantConfig, TrainConfig, TTTConfig)
from pgolf.config.validate import validate_run


@dataclass
class RunConfig:
    """One whole run."""

    name: str = "pgolf"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def to_dict(self) -> dict[str, Any]:
        """The whole configuration as nested plain values (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Defaults updated by a nested dict (see :meth:`update`)."""
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

    def validate(self, *, tokenizer_vocab: int | None = None) -> "RunConfig":
        """Reject impossible values with a message naming the key (:func:`validate_run`). Returns ``self``."""
        validate_run(self, tokenizer_vocab=tokenizer_vocab)
        return self

    def eval_modes(self) -> list[str]:
        """The scoring modes of ``eval.mode``, in order (the first is the reported score)."""
        return [m.strip() for m in self.eval.mode.split(",") if m.strip()]

    def eval_window(self) -> int:
        """``eval.window``, or ``train.seq_len`` when it is 0."""
        return self.eval.window or self.train.seq_len

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimiser step on each rank, so the global batch does not depend on the
        world size: ``global_micro_batches / world_size`` when that is set (train_gpt.py's
        ``8 // world_size``), else the fewest that keep micro-batches within ``micro_batch_tokens``."""
        t = self.train
        if t.global_micro_batches:
            if t.global_micro_batches % world_size:
                raise ConfigError(f"world_size={world_size} must divide train.global_micro_batches="
                                  f"{t.global_micro_batches} (train_gpt.py: WORLD_SIZE must divide 8)")
            return t.global_micro_batches // world_size
        per_rank = t.train_batch_tokens // world_size
        if t.train_batch_tokens % world_size or per_rank % t.seq_len:
            raise ConfigError(
                f"train.train_batch_tokens={t.train_batch_tokens} must split into whole sequences of "
                f"{t.seq_len} over world_size={world_size}")
        accum = max(1, math.ceil(per_rank / t.micro_batch_tokens))
        while per_rank % accum or (per_rank // accum) % t.seq_len:
            accum += 1
        return accum


_SECTIONS = ("model", "data", "optim", "train", "quant", "eval", "ttt", "cache")


def _field_types(cls: type) -> dict[str, type]:
    hints = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: hints.get(str(f.type), object) for f in dataclasses.fields(cls)
            if f.name not in _SECTIONS}


def _section_classes() -> dict[str, type]:
    return {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
            "train": TrainConfig, "quant": QuantConfig, "eval": EvalConfig, "ttt": TTTConfig,
            "cache": CacheConfig}


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
    """Convert ``value`` (often a string from the CLI or environment) to ``ftype``; a list, a
    mapping or null (from a JSON file) is never turned into a string."""
    if ftype is str and (not isinstance(value, (str, int, float)) or isinstance(value, bool)):
        raise ConfigError(f"invalid value {value!r} for {key}: expected one string (a glob matches several "
                          "files: write one pattern, e.g. 'dir/fineweb_train_*.bin')")
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
