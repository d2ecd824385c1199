"""Parameter roles, declared once and read by the optimiser split and the quantisation plan.

* ``matrix``: a weight matrix of a block (Muon; quantised);
* ``embed``: the token embedding (Adam; quantised; the output head too when tied);
* ``head``: an untied output head (Adam; quantised);
* ``control``: gains, scales, residual mixes, skip weights (Adam; always stored float).

A module declares the roles of its own parameters in a ``param_roles`` dict (``{"weight": MATRIX}``
on :class:`pgolf.model.layers.CastedLinear`); every parameter no module claims is ``control``.
"""
from __future__ import annotations

from torch import nn

MATRIX, EMBED, HEAD, CONTROL = "matrix", "embed", "head", "control"
ROLES = (MATRIX, EMBED, HEAD, CONTROL)


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """``{state-dict name: role}`` for every parameter of ``model`` (shared parameters once, under
    their first name, as ``named_parameters`` lists them)."""
    roles = {}
    for module_name, module in model.named_modules():
        declared = getattr(module, "param_roles", {})
        for name, _ in module.named_parameters(recurse=False):
            roles[f"{module_name}.{name}" if module_name else name] = declared.get(name, CONTROL)
    return roles
