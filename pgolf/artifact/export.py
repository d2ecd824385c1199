"""From a trained model to a size-accounted artifact, and back to a model.

Size accounting (decimal bytes, cap 16,000,000): ``bytes_total = bytes_code + bytes_model`` where
``bytes_model`` is the artifact file's size on disk and ``bytes_code`` counts every source file
needed to rebuild and run it: the ``pgolf`` and ``triton_kernels`` Python sources and ``csrc/``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pgolf.artifact.format import ArtifactError, load_artifact, save_artifact
from pgolf.config import ModelConfig, QuantConfig
from pgolf.model.gpt import GPT
from pgolf.model.roles import parameter_roles
from pgolf.quant.rtn import dequantize_state_dict, quantize_state_dict

SIZE_CAP_BYTES = 16_000_000
# The file each quant.scheme exports into a run directory.
ARTIFACT_NAMES = {"pgolf": "model.pgolf", "official_int8": "final_model.int8.ptz"}
_ROOT = Path(__file__).resolve().parents[2]


class OversizeError(RuntimeError):
    """The artifact plus code exceeds the 16,000,000-byte cap."""


def code_files() -> list[Path]:
    """Source files counted as code bytes: pgolf/**.py, triton_kernels/**.py, csrc/*."""
    files = [*sorted((_ROOT / "pgolf").rglob("*.py")), *sorted((_ROOT / "triton_kernels").rglob("*.py"))]
    csrc = _ROOT / "csrc"
    if csrc.is_dir():
        files += sorted(p for p in csrc.iterdir() if p.suffix in (".cpp", ".h", ".hpp"))
    return files


def code_bytes() -> int:
    """Total size of :func:`code_files` in bytes."""
    return sum(p.stat().st_size for p in code_files())


@dataclass(frozen=True)
class ExportReport:
    """Where an artifact was written, its size accounting (decimal bytes) and how each quantised
    matrix was rounded (``{name: "rtn" | "gptq" | "rtn (GPTQ fallback: ...)"}``)."""

    path: Path
    bytes_model: int
    bytes_code: int
    methods: dict = field(default_factory=dict)

    @property
    def bytes_total(self) -> int:
        return self.bytes_model + self.bytes_code

    @property
    def fits(self) -> bool:
        return self.bytes_total <= SIZE_CAP_BYTES


def export_model(model: GPT, qcfg: QuantConfig, path: str | Path, *, allow_oversize: bool = False,
                 meta: dict | None = None, hessians: dict | None = None) -> ExportReport:
    """Quantise ``model`` per ``qcfg`` (GPTQ for the matrices in ``hessians``), write the artifact,
    and account its size.

    ``qcfg.scheme="official_int8"`` writes the official ``final_model.int8.ptz`` bytes instead
    (:mod:`pgolf.artifact.official_int8`; no model config inside, ``meta`` unused).

    Raises :class:`OversizeError` when over the cap unless ``allow_oversize``; the file is kept
    either way so the work is not lost. Weights holding NaN or inf raise ``ValueError`` before
    anything is written (they would quantise to finite garbage).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"not exporting {path}: the weights {', '.join(bad[:4])} hold NaN or inf")
    methods: dict[str, str] = {}
    if qcfg.scheme == "official_int8":
        from pgolf.artifact.official_int8 import save_official_int8  # this scheme only (pgolf submit leaves it out)

        save_official_int8(path, state, parameter_roles(model))
    else:
        entries = quantize_state_dict(state, qcfg, parameter_roles(model), hessians=hessians, report=methods)
        config = {"model": model.cfg.__dict__, "quant": qcfg.__dict__}
        save_artifact(path, config=config, tensors=entries, codec=qcfg.codec, meta=meta or {})
    report = ExportReport(Path(path), Path(path).stat().st_size, code_bytes(), methods)
    if not report.fits and not allow_oversize:
        raise OversizeError(
            f"artifact {path} is {report.bytes_model:,} bytes + code {report.bytes_code:,} bytes = "
            f"{report.bytes_total:,} > {SIZE_CAP_BYTES:,}; shrink the model or pass --set allow_oversize=1")
    return report


def load_exported(path: str | Path, *, device: torch.device | str = "cpu", official_cfg: ModelConfig | None = None
                  ) -> GPT:
    """Rebuild a fresh model from an artifact (config and weights both come from the file), or,
    with ``official_cfg``, from an official int8 file (which holds weights only), the way the
    official script reloads it: into a model of that config and its dtype layout."""
    if official_cfg is not None:
        from pgolf.artifact.official_int8 import load_official_int8

        model = GPT(official_cfg).place(device)
        model.load_state_dict(load_official_int8(path), strict=True)
        return model
    return load_exported_with_meta(path, device=device)[0]


def load_exported_with_meta(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """:func:`load_exported`, and the artifact's ``meta`` (e.g. the run identity the pipeline
    records: tokenizer, ``seq_len``, validation settings). A config the model cannot be built
    from, or tensors that do not fit it, raise :class:`~pgolf.artifact.format.ArtifactError`
    naming the key or tensor (model keys missing from the config take their defaults)."""
    art = load_artifact(path)
    model = GPT(_model_config(art.config, path)).place(device)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(art.tensors))
    if missing:
        raise ArtifactError(f"artifact {path}: its tensors do not fit the model its config describes (it lacks "
                            f"{', '.join(missing[:5])})")
    try:
        model.load_state_dict(dequantize_state_dict(art.tensors), strict=True)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ArtifactError(f"artifact {path}: its tensors do not fit the model its config describes ({first})") from None
    return model, art.meta


def _model_config(config: dict[str, Any], path: str | Path) -> ModelConfig:
    saved = config.get("model")
    if not isinstance(saved, dict):
        raise ArtifactError(f"artifact {path} has no model config; it was not written by pgolf's exporter")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ArtifactError(f"artifact {path} has model config keys this pgolf does not know: {', '.join(unknown)}; "
                            "load it with the pgolf version that wrote it")
    try:
        return ModelConfig(**saved)
    except TypeError as e:
        raise ArtifactError(f"artifact {path} has an unusable model config: {e}") from None
