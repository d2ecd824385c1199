"""What a run's configuration needs from the bundle, and what the bundle cannot give it.

The challenge's environment has torch, numpy, sentencepiece, tqdm and the standard library (its
``requirements.txt``), not pgolf's C++ extension nor ``zstandard``. A configuration whose codec
needs the extension (:data:`NATIVE_CODECS`) carries its C++ source and builds it at run time
(:mod:`pgolf.submit.native`); one that needs ``zstandard`` is refused (:func:`unsupported`) with
the reason and the setting that avoids it.

Modules the configuration never runs are left out (:func:`left_out`): the features of
:data:`OPTIONAL` that it does not switch on, the Triton kernels whose own setting is ``'torch'``
(:func:`_torch_setting`), and the demo corpus builder. The modules that reach an optional one import
it inside the branch its setting selects, so a left-out module is never imported; one that a
bundled module still imports at its top level gets a stub that raises when used. A new optional
feature adds its rule to :data:`OPTIONAL` (and imports its modules lazily); one the bundle cannot
carry adds a check to :func:`unsupported`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from pgolf.config import RunConfig, split_mode
from pgolf.submit.graph import Module

# The artifact codecs whose writer and reader need nothing outside the challenge's requirements,
# and those of them that also need pgolf's C++ codec (built from the source the script carries).
PORTABLE_CODECS = ("zlib", "rans")
NATIVE_CODECS = ("rans",)
# Modules of the embedded demo corpus: a submission reads the shards it is given, never builds them.
CORPUS_BUILDER = ("pgolf.data.build", "pgolf.data.corpus")
# The fused softcapped cross-entropy, imported by pgolf.model.loss on the model.loss_impl != "torch" path only.
FUSED_LOSS = "triton_kernels.softcap_ce"


def _predictors(cfg: RunConfig) -> set[str]:
    """The predictors any of the scoring modes stacks on the model (``ttt``, ``cache``)."""
    return {name for mode in cfg.eval_modes() for name in split_mode(mode)[1]}


def needs_native(cfg: RunConfig) -> bool:
    """Whether ``cfg``'s artifact codec needs pgolf's C++ codec (the script then builds it)."""
    return cfg.quant.codec in NATIVE_CODECS


class Optional(NamedTuple):
    """A feature a configuration may leave off: its modules (each with everything under it),
    whether ``cfg`` uses it, and the reason a bundle without it gives."""

    modules: tuple[str, ...]
    used: Callable[[RunConfig], bool]
    unused_because: str


OPTIONAL = (
    Optional(("pgolf.eval.ttt", "triton_kernels.lora"), lambda cfg: "ttt" in _predictors(cfg),
             "no eval.mode uses ttt (LoRA test-time training)"),
    Optional(("pgolf.eval.cache", "pgolf.eval.tune_cache", "triton_kernels.neural_cache"),
             lambda cfg: "cache" in _predictors(cfg), "no eval.mode uses cache (the neural cache)"),
    Optional(("pgolf.quant.gptq", "pgolf.quant.calibrate"), lambda cfg: cfg.quant.method == "gptq",
             "quant.method is not 'gptq'"),
    Optional(("pgolf.quant.lqer",), lambda cfg: cfg.quant.lqer_top_k > 0, "quant.lqer_top_k is 0 (no LQER)"),
    Optional(("pgolf.quant.official_int8", "pgolf.artifact.official_int8"),
             lambda cfg: cfg.quant.scheme == "official_int8", "quant.scheme is not 'official_int8'"),
    Optional(("pgolf.eval.official",), lambda cfg: cfg.train.val_sum == "official",
             "train.val_sum is not 'official'"),
    Optional((FUSED_LOSS,), lambda cfg: cfg.model.loss_impl != "torch",
             "model.loss_impl='torch' computes the loss in torch, never with the fused kernel"),
    Optional(("pgolf.submit.native",), needs_native,
             "quant.codec needs no C++ codec (it is not one of " + ", ".join(NATIVE_CODECS) + ")"),
)


def unsupported(cfg: RunConfig) -> list[str]:
    """Why ``cfg`` cannot run as a bundled submission (empty when it can), one reason per setting."""
    reasons = []
    if cfg.quant.codec not in PORTABLE_CODECS:
        reasons.append(f"quant.codec={cfg.quant.codec!r} needs zstandard, which the challenge's environment lacks; "
                       "train with --set quant.codec=" + " or ".join(PORTABLE_CODECS))
    return reasons


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def left_out(cfg: RunConfig, modules: dict[str, Module]) -> dict[str, str]:
    """``{module: reason}`` for the modules of the import closure ``modules`` that ``cfg`` never runs."""
    out = {name: "a submission reads the shards it is given and never builds the embedded demo corpus"
           for name in CORPUS_BUILDER if name in modules}
    for feature in OPTIONAL:
        if not feature.used(cfg):
            out.update((name, feature.unused_because) for name in modules if _under(name, feature.modules))
    for name, m in modules.items():
        setting = _torch_setting(cfg, name)
        if "triton" in m.top_level_imports and setting and name not in out:
            out[name] = f"{setting}='torch' runs the pure-torch reference, never this Triton kernel"
    return out


def _torch_setting(cfg: RunConfig, name: str) -> str | None:
    """The setting that keeps module ``name``'s Triton kernels from running (it is ``'torch'``), or
    None when they may run: ``ttt.impl`` for the LoRA kernels, ``train.kernels`` for Newton-Schulz
    and fake quantisation; the neural cache has no such setting (its kernels run wherever Triton can),
    and the fused loss is all or nothing, by ``model.loss_impl`` (:data:`OPTIONAL`)."""
    if _under(name, ("triton_kernels.lora",)):
        return "ttt.impl" if cfg.ttt.impl == "torch" else None
    if _under(name, ("triton_kernels.neural_cache", FUSED_LOSS)):
        return None
    return "train.kernels" if cfg.train.kernels == "torch" else None
