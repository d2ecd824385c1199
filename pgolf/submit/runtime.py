"""What a bundled ``train_gpt.py`` runs: the run's configuration, overridden by the official
environment names, through pgolf's own pipeline (train -> export -> reload -> score).

The configuration baked into the script is the run's, with three differences: the run directory
is ``runs/<RUN_ID or name>_seed<SEED>/`` beside the script (a rerun of one seed replaces it, as the
official script overwrites its logs), the embedded demo corpus is never built (the script reads
the shards it is given), and the counted code bytes are the script's own size on disk (the shipped
file: the two-line wrapper when the submission uses one). A script that carries pgolf's C++ codec
source (``native``) builds it into ``build/codec/`` beside itself before anything else
(:mod:`pgolf.submit.native`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

from pgolf.artifact import export
from pgolf.config import ConfigError, RunConfig, env_overrides
from pgolf.pipeline import run_training
from pgolf.util.device import DistEnv


def resolve(config: Mapping[str, Any], script: str | os.PathLike, environ: Mapping[str, str]) -> RunConfig:
    """The baked ``config`` overridden by the official environment names in ``environ``, with the
    run directory beside ``script``; validated."""
    cfg = RunConfig.from_dict(config)
    for key, value in env_overrides(environ).items():
        cfg.set(key, value)
    cfg.data.embedded_default = False
    cfg.train.run_dir = str(Path(script).resolve().parent / "runs" / f"{cfg.name}_seed{cfg.train.seed}")
    cfg.validate()
    if not Path(cfg.data.tokenizer).is_file():
        raise ConfigError(f"tokenizer {cfg.data.tokenizer} does not exist; set TOKENIZER_PATH to the SentencePiece model")
    return cfg


def main(config: Mapping[str, Any], script: str | os.PathLike, native: Mapping[str, str] | None = None) -> int:
    """Train, export, reload and score per the baked ``config`` (see the module docstring), after
    building the C++ codec from ``native`` (``{file name: source}``) when given; returns the exit
    code: 0, 2 for a configuration error, 1 for any other error named on stderr."""
    try:
        cfg = resolve(config, script, os.environ)
        if native:
            from pgolf.submit.native import build_codec  # only a script that carries the C++ codec

            folder = Path(script).resolve().parent / "build" / "codec"
            seconds = build_codec(dict(native), folder)
            if seconds:
                print(f"native codec: compiled pgolf._codec from the embedded C++ source in {seconds:.1f}s ({folder})")
        counted = os.path.getsize(script)
        export.code_bytes = lambda: counted  # this script is the whole of the counted code
        run_training(cfg, DistEnv.from_environ(os.environ), overwrite=True)
    except ConfigError as e:
        print(f"{Path(script).name}: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"{Path(script).name}: error: {e}", file=sys.stderr)
        return 1
    return 0
