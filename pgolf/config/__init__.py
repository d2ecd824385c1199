"""Typed run configuration, named presets, and the three ways to override them.

A run is described by one :class:`RunConfig` made of sections (``model``, ``data``, ``optim``,
``train``, ``quant``, ``eval``). Values are resolved in this order, later winning:

1. a named preset (:data:`PRESETS`: ``demo`` for a CPU, ``gpu-demo``, ``baseline`` = official);
2. a JSON file (``--config run.json``), holding a nested dict of sections;
3. environment variables with the official ``train_gpt.py`` names (``ITERATIONS=...``), see
   :data:`ENV_OVERRIDES`; they are read only by the CLI entry point and passed in here;
4. ``--set section.key=value`` (or ``--set key=value`` when ``key`` names one field only).

Every value is parsed to its field's type and the whole config is validated by
:meth:`RunConfig.validate` before any work starts; errors raise :class:`ConfigError` with a
message naming the key.
"""
from pgolf.config.load import ENV_OVERRIDES, env_overrides, load_config
from pgolf.config.presets import PRESETS
from pgolf.config.run import RunConfig, parse_value, resolve_key
from pgolf.config.sections import (EVAL_MODES, PREDICTORS, CacheConfig, ConfigError, DataConfig, EvalConfig,
                                   ModelConfig, OptimConfig, QuantConfig, TrainConfig, TTTConfig, split_mode)
from pgolf.config.validate import parse_policy, parse_sigma_policy

__all__ = ["ENV_OVERRIDES", "EVAL_MODES", "PREDICTORS", "PRESETS", "CacheConfig", "ConfigError", "DataConfig",
           "EvalConfig", "ModelConfig", "OptimConfig", "QuantConfig", "RunConfig", "TTTConfig", "TrainConfig",
           "env_overrides", "load_config", "parse_policy", "parse_sigma_policy", "parse_value", "resolve_key",
           "split_mode"]
