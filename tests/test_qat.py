"""QAT in training: per-layer plan, the tensor switch, and its behaviour under torch.compile."""
import copy

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from torch import nn

from pgolf.config import QuantConfig
from pgolf.model.layers import CastedLinear
from pgolf.model.roles import MATRIX
from pgolf.quant.qat import enable_qat, qat_state_at, set_qat_state
from triton_kernels.fake_quant import fake_quant_linear


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = CastedLinear(24, 40)
        self.down = CastedLinear(40, 24, zero_init=True)
        self.head = CastedLinear(24, 8)

    def forward(self, x):
        return self.head(x + self.down(F.relu(self.up(x)).square()))


def test_enable_qat_follows_the_export_plan():
    model = _Tiny()
    keys = set(model.state_dict())
    qcfg = QuantConfig(bits=6, policy="down=5,head=0", keep_float_max_numel=200)
    assert enable_qat(model, qcfg) == {"up": 6, "down": 5}
    assert model.head.qat is None and model.up.qat.bits == 6 and model.down.qat.rule == qcfg.scale_rule
    assert set(model.state_dict()) == keys  # the switch buffers never reach the artifact
    assert not model.up.qat_active and model.up.qat_temperature == qcfg.qat_temperature_start
    set_qat_state(model, active=True, temperature=0.2)
    assert model.up.qat_active and model.down.qat_temperature.item() == pytest.approx(0.2)
    assert not model.head.qat_active  # layers the plan keeps float are untouched
    with pytest.raises(ValueError, match="temperature"):
        set_qat_state(model, active=True, temperature=0.0)


def test_plain_forward_unchanged_without_qat():
    layer = CastedLinear(24, 40)
    x = torch.randn(3, 24, dtype=torch.float16)
    assert torch.equal(layer(x), F.linear(x, layer.weight.half()))


def test_qat_schedule():
    qcfg = QuantConfig(qat_start_frac=0.5, qat_temperature_start=1.0, qat_temperature_end=0.01)
    assert qat_state_at(qcfg, 0.49) == (False, 1.0)
    assert qat_state_at(qcfg, 0.5) == (True, 1.0)
    assert qat_state_at(qcfg, 0.75)[1] == pytest.approx(0.1)
    assert qat_state_at(qcfg, 1.0)[1] == pytest.approx(0.01)
    assert qat_state_at(QuantConfig(qat_start_frac=-1.0), 1.0)[0] is False


def _train(model, steps, switch_at, batches, probe=None):
    """SGD steps with QAT switched on at ``switch_at``; ``probe`` collects the loss there with QAT off."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(steps):
        x, y = batches[step]
        if probe is not None and step == switch_at:
            with torch.no_grad():
                probe.append(F.mse_loss(model(x), y).item())
        set_qat_state(model, active=step >= switch_at, temperature=0.5)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_switch_is_not_constant_folded_by_compile(impl):
    """One compiled graph; QAT switched on at step 2 changes the loss exactly as in eager."""
    torch.manual_seed(0)
    eager = _Tiny()
    qcfg = QuantConfig(bits=5, scale_rule="sigma", clip_sigma=2.0, qat_surrogate="softround", keep_float_max_numel=0)
    enable_qat(eager, qcfg, impl=impl)
    model = copy.deepcopy(eager)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    batches = [(torch.randn(16, 24), torch.randn(16, 8)) for _ in range(4)]
    got = _train(compiled, 4, 2, batches)
    plain = []
    want = _train(eager, 4, 2, batches, probe=plain)
    assert counter.frame_count == 1, "flipping the tensor switch must not recompile"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert abs(plain[0] - got[2]) > 1e-4  # the same weights without QAT give another loss


def test_python_bool_switch_is_specialised_by_compile():
    """What a Python attribute does instead (torch 2.13): it is guarded, each flip recompiles.

    Older setups were reported to fold it silently; either way the compiled graph holds the
    value as a constant, which is why CastedLinear keeps its switch in a tensor.
    """
    class Naive(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = CastedLinear(24, 8)
            self.qat_on = False

        def forward(self, x):
            w = self.lin.weight
            if self.qat_on:
                return fake_quant_linear(x, w, bits=5, impl="torch")
            return F.linear(x, w)

    model = Naive()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(4, 24)
    off = compiled(x)
    model.qat_on = True
    on = compiled(x)
    assert not torch.equal(on, off)
    assert counter.frame_count == 2  # a second graph was compiled for the flipped constant


def test_enable_qat_refuses_a_tensor_export_would_quantise_but_training_cannot():
    """The classic quant-gap bug: a weight quantised only at export. enable_qat names it. (A module
    declares the roles of its own parameters; ``table`` is declared a matrix, which export
    quantises, but no QAT-capable layer owns it. An undeclared parameter is a control gain and
    stays float in both.)"""
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = CastedLinear(16, 16)
            self.table = nn.Parameter(torch.randn(16, 16))
            self.param_roles = {"table": MATRIX}

    qcfg = QuantConfig(bits=6, keep_float_max_numel=0)
    with pytest.raises(ValueError, match=r"QAT cannot fake-quantise table, which export would quantise"):
        enable_qat(Odd(), qcfg)
    assert enable_qat(Odd(), QuantConfig(bits=6, keep_float_max_numel=0, policy="table=0")) == {"fc": 6}
