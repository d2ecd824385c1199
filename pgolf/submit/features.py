"""What a run's configuration needs from the bundle, and what the bundle cannot give it.

The challenge's environment has torch, numpy, sentencepiece, tqdm and the standard library (its
``requirements.txt``), not pgolf's C++ extension nor ``zstandard``. A configuration that needs
either is refused (:func:`unsupported`) with the reason and the setting that avoids it. Modules the
configuration never runs are left out (:func:`left_out`): a bundled module that imports one at
its top level gets a stub that raises when used. A new feature that the bundle cannot carry adds
a check here; one it can carry needs nothing (the import graph brings its modules).
"""
from __future__ import annotations

from pgolf.config import RunConfig
from pgolf.submit.graph import Module

# The artifact codecs whose writer and reader need nothing outside the challenge's requirements.
PORTABLE_CODECS = ("zlib",)
# Modules of the embedded demo corpus: a submission reads the shards it is given, never builds them.
CORPUS_BUILDER = ("pgolf.data.build", "pgolf.data.corpus")
# The fused softcapped cross-entropy, imported by pgolf.model.loss on the model.loss_impl != "torch" path only.
FUSED_LOSS = "triton_kernels.softcap_ce"


def unsupported(cfg: RunConfig) -> list[str]:
    """Why ``cfg`` cannot run as a bundled submission (empty when it can), one reason per setting."""
    reasons = []
    if cfg.quant.codec not in PORTABLE_CODECS:
        reasons.append(f"quant.codec={cfg.quant.codec!r} needs pgolf's C++ codec or zstandard, which the challenge's "
                       f"environment lacks; train with --set quant.codec={PORTABLE_CODECS[0]}")
    return reasons


def left_out(cfg: RunConfig, modules: dict[str, Module]) -> dict[str, str]:
    """``{module: reason}`` for the modules of the import closure ``modules`` that ``cfg`` never runs."""
    out = {name: "a submission reads the shards it is given and never builds the embedded demo corpus"
           for name in CORPUS_BUILDER if name in modules}
    fused_loss = {name for name in modules if name == FUSED_LOSS or name.startswith(FUSED_LOSS + ".")}
    if cfg.model.loss_impl == "torch":
        out.update((name, "model.loss_impl='torch' computes the loss in torch, never with the fused kernel")
                   for name in fused_loss)
    if cfg.train.kernels == "torch":
        out.update((name, "train.kernels='torch' runs the pure-torch references, never a Triton kernel")
                   for name, m in modules.items() if "triton" in m.top_level_imports and name not in fused_loss)
    return out
