"""Calibration for GPTQ: the Hessians ``H = sum_tokens x^T x`` of every quantised matrix's inputs.

Forward hooks on every :class:`~pgolf.model.layers.CastedLinear` add the input of each call (so a
layer run several times per forward, as under depth recurrence, sums all its passes); a tied
embedding is quantised as the output head, so its Hessian is built from the final hidden states
(the head's input). Only batches the caller passes are read: the pipeline passes training batches
from :class:`~pgolf.data.loader.TokenLoader`, never validation data.
"""
from __future__ import annotations

import time
from typing import Iterable

import torch
from torch import nn

from pgolf.config import QuantConfig
from pgolf.data.loader import TokenLoader
from pgolf.model.layers import CastedLinear
from pgolf.model.roles import parameter_roles
from pgolf.quant.rtn import quantize_state_dict
from pgolf.util.device import autocast_for


def _accumulate(store: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> None:
    x = x.detach().reshape(-1, x.shape[-1]).float()
    h = x.T @ x
    store[name] = h if name not in store else store[name] + h


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[torch.Tensor], *, device: torch.device) -> dict[str, torch.Tensor]:
    """``{weight name: H}`` (float32, on the CPU) over ``batches`` of input ids ``[B, T]``; the model
    needs ``hidden_states`` and, when untied, ``logits_from_hidden`` (which calls the head)."""
    hessians: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, CastedLinear):
            weight = f"{name}.weight" if name else "weight"
            handles.append(mod.register_forward_hook(
                lambda m, inputs, output, weight=weight: _accumulate(hessians, weight, inputs[0])))
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            with autocast_for(device):
                h = model.hidden_states(x.to(device))
                if getattr(model, "lm_head", None) is None:
                    _accumulate(hessians, "tok_emb.weight", h)
                else:
                    model.logits_from_hidden(h)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {k: v.cpu() for k, v in hessians.items()}


def calibration_batches(loader: TokenLoader, count: int, *, first_step: int, batch_tokens: int,
                        seq_len: int) -> list[torch.Tensor]:
    """``count`` batches of input ids from the training stream of ``loader``, at steps
    ``first_step, first_step + 1, ...`` (after the last training step: data the model has not seen)."""
    return [loader.next_batch(first_step + i, global_tokens=batch_tokens, seq_len=seq_len, grad_accum_steps=1,
                              micro_step=0)[0] for i in range(count)]


def gptq_seconds(model: nn.Module, qcfg: QuantConfig, batches: list[torch.Tensor], *, device: torch.device) -> float:
    """Wall seconds of a whole GPTQ calibration (Hessians over ``batches`` + GPTQ of every planned
    matrix) on ``model`` as it is: the cost depends on shapes, not on trained values, so measuring it
    on the initial weights tells the training loop how much of its cap to leave."""
    t0 = time.perf_counter()
    hessians = collect_hessians(model, batches, device=device)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    quantize_state_dict(state, qcfg, parameter_roles(model), hessians=hessians)
    return time.perf_counter() - t0
