"""A finished run -> a records folder in the challenge's layout: ``train_gpt.py``,
``submission.json``, ``README.md`` and the run's ``train.log``.

Every check runs before anything is written; the folder is assembled in a temporary sibling and
renamed into place at the end, so a failure leaves nothing half-written behind. An existing folder
is replaced only with ``overwrite``, and only when it holds nothing but a records folder's files
and none of the submission's inputs (:func:`_check_out`).

The run's files must describe one finished run (:func:`_check_finished`): the artifact its
``quant.scheme`` exports, of the size its ``submission.json`` reports, scored at the step its
checkpoint holds, which is where ``config.json`` says training stops.
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

from pgolf.artifact.export import ARTIFACT_NAMES, SIZE_CAP_BYTES
from pgolf.config import ConfigError, RunConfig
from pgolf.data.tokenizer import TokenizerError, load_tokenizer
from pgolf.submit.features import needs_native
from pgolf.submit.script import BundleError, plan_bundle, render
from pgolf.submit.wrapper import minify, minify_cpp, wrap
from pgolf.train.checkpoint import CheckpointError, load_checkpoint, pgolf_checkpoint

RUN_FILES = ("config.json", "train.log", "submission.json")
# What a records folder written here holds: the only entries ``overwrite`` deletes.
RECORD_FILES = ("README.md", "submission.json", "train.log", "train_gpt.py")
# What the run's report must hold to be checked and submitted.
REPORT_KEYS = ("val_loss", "val_bpb", "bytes_model", "steps", "stop_reason")


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


def _read_run(run_dir: Path) -> tuple[RunConfig, dict[str, Any], Path]:
    """The run's configuration, measured report and artifact; :class:`SubmitError` when the run is
    not finished or its files do not describe one finished run (:func:`_check_finished`)."""
    if not run_dir.exists():
        raise SubmitError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise SubmitError(f"run directory {run_dir} is not a directory; give the folder pgolf train wrote (its run_dir)")
    unfinished = "the run has not finished (finish it with pgolf train --resume, or point at a finished run)"
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise SubmitError(f"run directory {run_dir} lacks {', '.join(missing)}: {unfinished}")
    try:
        cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        report = json.loads((run_dir / "submission.json").read_text())
    except (json.JSONDecodeError, ConfigError) as e:
        raise SubmitError(f"run directory {run_dir}: config.json or submission.json is unreadable: {e}") from None
    for key in REPORT_KEYS:
        if key not in report:
            raise SubmitError(f"{run_dir / 'submission.json'} has no {key!r}: the run did not finish its export")
    artifact = run_dir / ARTIFACT_NAMES[cfg.quant.scheme]
    if not artifact.is_file():
        raise SubmitError(f"run directory {run_dir} lacks {artifact.name}: {unfinished}")
    _check_finished(run_dir, cfg, report, artifact)
    return cfg, report, artifact


def _checkpoint_step(path: Path) -> int:
    """The training step of the pgolf checkpoint at ``path`` (checksums verified)."""
    try:
        return int(pgolf_checkpoint(load_checkpoint(path), path)["step"])
    except CheckpointError as e:
        why = str(e).splitlines()[0]
        raise SubmitError(f"{why}; so the run's state is unknown: retrain it with pgolf train --overwrite") from None


def _check_finished(run_dir: Path, cfg: RunConfig, report: dict[str, Any], artifact: Path) -> None:
    """Refuse run files that disagree: a checkpoint past (or before) the scored step (a resume that
    has not finished), a stop that ``config.json``'s iterations and wall-clock cap do not explain
    (a config rewritten after the export), an artifact of another size than the one scored."""
    steps, reason, iterations = report["steps"], report["stop_reason"], cfg.train.iterations
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.is_file() and (at := _checkpoint_step(ckpt)) != steps:
        raise SubmitError(f"run directory {run_dir}: checkpoint.pt is at step {at} but submission.json scored the model "
                          f"at step {steps}: the run was resumed and has not finished; finish it with pgolf train "
                          "--resume, or retrain it with --overwrite")
    if reason not in ("iterations", "wallclock_cap"):
        raise SubmitError(f"{run_dir / 'submission.json'} has stop_reason {reason!r}, which pgolf train never writes; "
                          "retrain the run with pgolf train --overwrite")
    if steps > iterations:
        raise SubmitError(f"run directory {run_dir}: submission.json scored step {steps} but config.json asks for "
                          f"train.iterations={iterations}: config.json was rewritten after the export; restore it with "
                          f"pgolf train --resume --set train.iterations={steps}, or retrain it with --overwrite")
    capped = reason == "wallclock_cap" and cfg.train.max_wallclock_seconds > 0
    if steps < iterations and not capped:
        raise SubmitError(f"run directory {run_dir}: config.json asks for train.iterations={iterations} (wall-clock cap "
                          f"{cfg.train.max_wallclock_seconds:g} s) but submission.json scored step {steps}: the run has "
                          "not finished; finish it with pgolf train --resume, or retrain it with --overwrite")
    size = artifact.stat().st_size
    if size != report["bytes_model"]:
        raise SubmitError(f"run directory {run_dir}: {artifact.name} is {size:,} bytes but submission.json scored "
                          f"{report['bytes_model']:,}: the artifact is not the scored one; retrain the run with "
                          "pgolf train --overwrite")


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
    try:
        load_tokenizer(cfg.data.tokenizer, vocab_size=cfg.model.vocab_size)
    except TokenizerError as e:
        raise SubmitError(f"{e}; pass --tokenizer with the run's SentencePiece model of {cfg.model.vocab_size} "
                          "pieces (model.vocab_size)") from None
    cfg.data.embedded_default = False
    return cfg


def _check_out(out: Path, inputs: dict[str, str | os.PathLike], *, overwrite: bool) -> None:
    """Refuse an existing ``out`` that ``overwrite`` must not (or was not asked to) replace: a file or
    link, a folder that is or holds one of ``inputs`` (``{what: path}``, symbolic links resolved),
    or one holding anything but :data:`RECORD_FILES` (the run's own files, other work)."""
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_dir():
        raise SubmitError(f"output {out} exists and is not a folder (a file or a link); choose another --out")
    real = out.resolve()
    for what, path in inputs.items():
        if Path(path).resolve().is_relative_to(real):
            raise SubmitError(f"output folder {out} is or holds the {what} {path}, which replacing the folder would "
                              "delete; choose an --out outside it")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RECORD_FILES or not p.is_file())
    if foreign:
        raise SubmitError(f"output folder {out} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, "
                          f"which pgolf submit did not write; --overwrite replaces only a records folder (it holds "
                          f"{', '.join(RECORD_FILES)}): move them away, or choose another --out")
    if not overwrite:
        raise SubmitError(f"output folder {out} already exists; pass --overwrite to replace it")


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
    export = ("train_gpt.py's int8 + zlib (`final_model.int8.ptz`)" if q.scheme == "official_int8" else
              f"{q.bits}-bit per-row codes (policy `{q.policy or '-'}`), {q.codec}")
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
(wall-clock cap {t.max_wallclock_seconds:g} s), seed {t.seed}; export: {export}.

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
    when the run is unfinished or its files disagree, the configuration cannot be bundled, the
    tokenizer is missing or not the run's vocabulary, ``out`` exists without ``overwrite`` or may not
    be replaced (:func:`_check_out`), or code + model exceed 16,000,000 bytes.
    """
    run_dir, out = Path(run_dir), Path(out)
    cfg, report, artifact = _read_run(run_dir)
    cfg = _baked_config(cfg, data_path, tokenizer)
    _check_out(out, {"run directory": run_dir, "tokenizer": cfg.data.tokenizer,
                     "training data": Path(cfg.data.train_glob).parent,
                     "validation data": Path(cfg.data.val_glob).parent}, overwrite=overwrite)
    script, readable = make_script(cfg, wrapper=wrapper)
    bytes_model = artifact.stat().st_size
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
