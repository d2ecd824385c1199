"""A finished run -> a records folder in the challenge's layout: ``train_gpt.py``,
``submission.json``, ``README.md`` and the run's ``train.log``.

Every check runs before anything is written; the folder is assembled in a temporary sibling and
renamed into place at the end, so a failure leaves nothing half-written behind (and an existing
folder is replaced only with ``overwrite``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.artifact.export import SIZE_CAP_BYTES
from pgolf.config import ConfigError, RunConfig
from pgolf.submit.features import needs_native
from pgolf.submit.script import BundleError, plan_bundle, render
from pgolf.submit.wrapper import minify, minify_cpp, wrap

RUN_FILES = ("config.json", "train.log", "model.pgolf", "submission.json")


class SubmitError(ValueError):
    """The run, the options or the output folder do not allow a submission; the message says why."""


@dataclass(frozen=True)
class Submission:
    """What was written: the folder, the counted code bytes (the shipped ``train_gpt.py``), the
    run's model bytes, their sum, and the raw size of the readable script."""

    out: Path
    bytes_code: int
    bytes_model: int
    bytes_readable: int

    @property
    def bytes_total(self) -> int:
        return self.bytes_code + self.bytes_model


def _read_run(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """The run's configuration and measured report; :class:`SubmitError` when the run is not finished."""
    if not run_dir.is_dir():
        raise SubmitError(f"run directory {run_dir} does not exist")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise SubmitError(f"run directory {run_dir} lacks {', '.join(missing)}: the run has not finished "
                          "(finish it with pgolf train --resume, or point at a finished run)")
    try:
        cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        report = json.loads((run_dir / "submission.json").read_text())
    except (json.JSONDecodeError, ConfigError) as e:
        raise SubmitError(f"run directory {run_dir}: config.json or submission.json is unreadable: {e}") from None
    for key in ("val_loss", "val_bpb", "bytes_model"):
        if key not in report:
            raise SubmitError(f"{run_dir / 'submission.json'} has no {key!r}: the run did not finish its export")
    return cfg, report


def _baked_config(cfg: RunConfig, data_path: str | None, tokenizer: str | None) -> RunConfig:
    """``cfg`` with the data paths the script should read by default (DATA_PATH's naming)."""
    if data_path is not None:
        root = data_path.rstrip("/")
        cfg.data.train_glob, cfg.data.val_glob = f"{root}/fineweb_train_*.bin", f"{root}/fineweb_val_*.bin"
    if tokenizer is not None:
        cfg.data.tokenizer = tokenizer
    if not Path(cfg.data.tokenizer).is_file():
        raise SubmitError(f"tokenizer {cfg.data.tokenizer} does not exist (relative paths are read from here, as "
                          "the script will read them from where it runs); pass --tokenizer PATH")
    cfg.data.embedded_default = False
    return cfg


def make_script(cfg: RunConfig, *, wrapper: bool) -> tuple[str, str]:
    """``(shipped, readable)`` texts of ``train_gpt.py`` for ``cfg``: the readable bundle, and what is
    shipped and counted (the bundle itself, or with ``wrapper`` its compressed wrapper);
    :class:`SubmitError` when the configuration cannot be bundled."""
    try:
        bundle = plan_bundle(cfg)
    except BundleError as e:
        raise SubmitError(str(e)) from None
    config, title = cfg.to_dict(), f"{cfg.name}: a Parameter Golf submission"
    readable = render(bundle, config, title=title)
    if not wrapper:
        return readable, readable
    small = dataclasses.replace(bundle,
                                sources={name: (pkg, minify(src)) for name, (pkg, src) in bundle.sources.items()},
                                native={name: minify_cpp(src) for name, src in bundle.native.items()})
    return wrap(minify(render(small, config, title=title))), readable


def _readme(cfg: RunConfig, report: dict[str, Any], sub: Submission, *, wrapper: bool, command: str) -> str:
    m, t, q = cfg.model, cfg.train, cfg.quant
    compiler = ("a C++17 compiler (at start it compiles pgolf's codec from the C++ source it carries, "
                "into build/ beside it; CXX names the compiler)" if needs_native(cfg) else "no compiler")
    cpp = "; the C++ it carries without comments or layout" if needs_native(cfg) else ""
    counting = (f"the two-line compressed wrapper (python-minifier, LZMA, base85{cpp}) that is shipped as "
                f"train_gpt.py; the readable bundle it expands to is {sub.bytes_readable:,} bytes" if wrapper
                else "train_gpt.py as shipped")
    return f"""# {cfg.name}

Generated by `{command}` from a pgolf run. `train_gpt.py` is one self-contained script, assembled from
pgolf's own modules (only those this configuration uses) with the run's configuration baked in as
defaults; the official environment names override it. It needs only the challenge's requirements
(torch, numpy, sentencepiece, tqdm): no pgolf, {compiler}, no network.

    DATA_PATH=./data/datasets/fineweb10B_sp{m.vocab_size} TOKENIZER_PATH=./data/tokenizers/... \\
        torchrun --standalone --nproc_per_node=8 train_gpt.py

## What was run

{m.num_layers} layers x {m.model_dim}, {m.num_heads} heads / {m.num_kv_heads} KV heads, MLP {m.mlp_mult}x, vocab \
{m.vocab_size}; {t.iterations} iterations of {t.train_batch_tokens:,} tokens at sequence length {t.seq_len} \
(wall-clock cap {t.max_wallclock_seconds:g} s), seed {t.seed}; export: {q.bits}-bit per-row codes \
(policy `{q.policy or '-'}`), {q.codec}.

## Measured (the run's own `train.log` and report)

| | |
|---|---|
| val_loss | {report['val_loss']:.8f} |
| val_bpb | {report['val_bpb']:.8f} |
| steps | {report.get('steps', '?')} |
| training time | {report.get('train_time_ms', '?')} ms on {report.get('device', '?')} x {report.get('world_size', '?')} |
| model bytes (artifact) | {sub.bytes_model:,} |
| code bytes ({counting}) | {sub.bytes_code:,} |
| **total** | **{sub.bytes_total:,}** (cap {SIZE_CAP_BYTES:,}) |
"""


def build_submission(run_dir: str | os.PathLike, out: str | os.PathLike, *, wrapper: bool = False,
                     overwrite: bool = False, data_path: str | None = None, tokenizer: str | None = None,
                     author: str = "", github_id: str = "", blurb: str = "",
                     command: str = "pgolf submit") -> Submission:
    """Write the records folder of the finished run ``run_dir`` to ``out`` (see the module docstring).

    ``wrapper`` ships the compressed wrapper as ``train_gpt.py`` and counts it; ``data_path`` and
    ``tokenizer`` replace the run's data paths as the script's defaults. Raises :class:`SubmitError`
    when the run is unfinished, the configuration cannot be bundled, the tokenizer is missing,
    ``out`` exists without ``overwrite``, or code + model exceed 16,000,000 bytes.
    """
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not overwrite:
        raise SubmitError(f"output folder {out} already exists; pass --overwrite to replace it")
    cfg, report = _read_run(run_dir)
    cfg = _baked_config(cfg, data_path, tokenizer)
    script, readable = make_script(cfg, wrapper=wrapper)
    bytes_model = (run_dir / "model.pgolf").stat().st_size
    sub = Submission(out, len(script.encode("utf-8")), bytes_model, len(readable.encode("utf-8")))
    if sub.bytes_total > SIZE_CAP_BYTES:
        raise SubmitError(f"code {sub.bytes_code:,} bytes + model {sub.bytes_model:,} bytes = {sub.bytes_total:,} > "
                          f"{SIZE_CAP_BYTES:,}" + ("" if wrapper else "; try --wrapper, or a smaller model"))
    fields = {"author": author, "github_id": github_id, "name": cfg.name, "blurb": blurb,
              "date": report.get("date", ""), "val_loss": report["val_loss"], "val_bpb": report["val_bpb"],
              "bytes_total": sub.bytes_total, "bytes_code": sub.bytes_code, "bytes_model": sub.bytes_model,
              "seed": cfg.train.seed, "steps": report.get("steps"), "train_time_ms": report.get("train_time_ms"),
              "code_counting": "compressed wrapper" if wrapper else "script"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a records folder is for others to read
        (tmp / "train_gpt.py").write_text(script, encoding="utf-8")
        (tmp / "submission.json").write_text(json.dumps(fields, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(cfg, report, sub, wrapper=wrapper, command=command), encoding="utf-8")
        shutil.copyfile(run_dir / "train.log", tmp / "train.log")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return sub
