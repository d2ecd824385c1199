"""From a trained model to a size-accounted artifact, and back to a model.

Size accounting (decimal bytes, cap 16,000,000): ``bytes_total = bytes_code + bytes_model`` where
``bytes_model`` is the artifact file's size on disk and ``bytes_code`` counts every source file
needed to rebuild and run it: the ``pgolf`` and ``triton_kernels`` Python sources and ``csrc/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf.artifact.format import load_artifact, save_artifact
from pgolf.artifact.official_int8 import load_official_int8, save_official_int8
from pgolf.config import ModelConfig, QuantConfig
from pgolf.model.gpt import GPT
from pgolf.model.roles import parameter_roles
from pgolf.quant.rtn import dequantize_state_dict, quantize_state_dict

SIZE_CAP_BYTES = 16_000_000
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
    """Where an artifact was written and its size accounting (decimal bytes)."""

    path: Path
    bytes_model: int
    bytes_code: int

    @property
    def bytes_total(self) -> int:
        return self.bytes_model + self.bytes_code

    @property
    def fits(self) -> bool:
        return self.bytes_total <= SIZE_CAP_BYTES


def export_model(model: GPT, qcfg: QuantConfig, path: str | Path, *, allow_oversize: bool = False,
                 meta: dict | None = None) -> ExportReport:
    """Quantise ``model`` per ``qcfg``, write the artifact, and account its size.

    ``qcfg.scheme="official_int8"`` writes the official ``final_model.int8.ptz`` bytes instead
    (:mod:`pgolf.artifact.official_int8`; no model config inside, ``meta`` unused).

    Raises :class:`OversizeError` when over the cap unless ``allow_oversize``; the file is kept
    either way so the work is not lost.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if qcfg.scheme == "official_int8":
        save_official_int8(path, state, parameter_roles(model))
    else:
        entries = quantize_state_dict(state, qcfg, parameter_roles(model))
        config = {"model": model.cfg.__dict__, "quant": qcfg.__dict__}
        save_artifact(path, config=config, tensors=entries, codec=qcfg.codec, meta=meta or {})
    report = ExportReport(Path(path), Path(path).stat().st_size, code_bytes())
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
        model = GPT(official_cfg).place(device)
        model.load_state_dict(load_official_int8(path), strict=True)
        return model
    art = load_artifact(path)
    model = GPT(ModelConfig(**art.config["model"])).place(device)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(art.tensors))
    if missing:
        raise ValueError(f"artifact {path} lacks tensors: {', '.join(missing[:5])}")
    model.load_state_dict(dequantize_state_dict(art.tensors), strict=True)
    return model
