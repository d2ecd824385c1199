"""Quantisation-aware training: attach the export quantiser to every weight export quantises.

Usage in a training loop::

    enable_qat(model, cfg.quant)                 # once, before torch.compile
    ...
    active, temperature = qat_state_at(cfg.quant, step / total_steps)
    set_qat_state(model, active=active, temperature=temperature)   # every step, cheap

Which layers train quantised, and with how many bits, comes from :func:`pgolf.quant.plan.plan` on the
model's own state dict: exactly the matrices the exporter will quantise, with the same bits.
The forward uses the same ``row_scales`` / rounding code as the exporter, so the weight a QAT
layer computes with equals ``dequantize(quantize(weight))`` bit for bit.

Why tensors for the switch: ``torch.compile`` specialises on Python attributes. On torch 2.13 we
observed that a Python bool or float on the module is *guarded* (each flip recompiles the graph,
costing seconds of the training budget); in other setups such a switch has been folded silently,
so late QAT never ran (see the challenge notes). The on/off switch and the soft-round
temperature therefore live in buffers that the compiled graph reads as data: one compile, no
guard, the value is always current. The static settings (bits, rule, surrogate) are Python values
set once before compiling.
"""
from __future__ import annotations

import math
from torch import nn

from pgolf.config import QuantConfig
from pgolf.model.layers import QATModule, QATSpec
from pgolf.model.roles import parameter_roles
from pgolf.quant.plan import plan, tensor_sigma


def enable_qat(model: nn.Module, qcfg: QuantConfig, *, impl: str = "auto") -> dict[str, int]:
    """Attach a :class:`QATSpec` to every QAT-capable layer whose weight :func:`plan` quantises.

    Layers the plan keeps float get ``qat = None``. QAT starts inactive (call
    :func:`set_qat_state`). Returns ``{module name: bits}`` of the layers that got QAT.

    Raises ``ValueError`` when the plan quantises a tensor that no QAT-capable layer owns: the
    exporter would quantise a weight training never saw quantised (the classic quant-gap bug).
    """
    bits = plan(model.state_dict(), qcfg, parameter_roles(model))
    enabled, covered = {}, set()
    for name, mod in model.named_modules():
        if isinstance(mod, QATModule):
            weight = f"{name}.weight" if name else "weight"
            b = bits.get(weight, 0)
            mod.qat = QATSpec(bits=b, rule=qcfg.scale_rule, percentile=qcfg.clip_percentile, sigma=tensor_sigma(weight, qcfg),
                              surrogate=qcfg.qat_surrogate, impl=impl) if b else None
            if b:
                enabled[name] = b
                covered.add(weight)
    uncovered = sorted(n for n, b in bits.items() if b and n not in covered)
    if uncovered:
        raise ValueError(f"QAT cannot fake-quantise {', '.join(uncovered)}, which export would quantise; "
                         f"keep them float with quant.policy (e.g. {uncovered[0].split('.')[0]}=0)")
    set_qat_state(model, active=False, temperature=qcfg.qat_temperature_start)
    return enabled


def set_qat_state(model: nn.Module, *, active: bool, temperature: float = 1.0) -> None:
    """Set the QAT switch and soft-round temperature of every QAT layer (in place, no recompile).

    Each distinct buffer is written once with ``fill_`` (no host-device sync).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    seen = set()
    for mod in model.modules():
        if isinstance(mod, QATModule) and mod.qat is not None:
            for buf, value in ((mod.qat_active, bool(active)), (mod.qat_temperature, float(temperature))):
                if id(buf) not in seen:
                    seen.add(id(buf))
                    buf.fill_(value)


def qat_state_at(qcfg: QuantConfig, progress: float) -> tuple[bool, float]:
    """``(active, temperature)`` at training ``progress`` in [0, 1] (step / steps or time / budget).

    QAT is active once ``progress >= qat_start_frac`` (never when ``qat_start_frac < 0``); the
    temperature moves geometrically from ``qat_temperature_start`` to ``qat_temperature_end`` over
    the active phase.
    """
    start = qcfg.qat_start_frac
    if start < 0 or progress < start:
        return False, qcfg.qat_temperature_start
    frac = min(1.0, (progress - start) / max(1e-12, 1.0 - start))
    t0, t1 = qcfg.qat_temperature_start, qcfg.qat_temperature_end
    return True, math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0)))
