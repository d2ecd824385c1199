"""Reliability, family 4: the library never hides non-finite inputs behind finite outputs.

Fake-quant gives a NaN row for a weight row holding NaN or inf on every path (the Triton path
used to give finite outputs, and an infinity clamped to a finite scale on both); export refuses
such weights; tensor-valued parameters are checked like float ones; the raw codec validates its
counts and says that it carries no checksum.
"""
import numpy as np
import pytest
import torch

from pgolf import codec
from triton_kernels.fake_quant import fake_quant_linear, fake_quant_weight, row_scales
from triton_kernels.newton_schulz import newton_schulz, ns_coefficients

NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("rule", ["maxabs", "sigma", "percentile"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fake_quant_linear_turns_a_non_finite_weight_row_into_nan_outputs(bad, rule, impl, reliability):
    torch.manual_seed(0)
    x, w = torch.randn(5, 24), torch.randn(7, 24)
    w[2, 5] = bad
    y = fake_quant_linear(x, w, bits=6, rule=rule, impl=impl)
    assert torch.isnan(y[:, 2]).all()  # the output channel of the broken row
    assert torch.isfinite(y[:, [0, 1, 3, 4, 5, 6]]).all()  # the others are untouched
    scales = row_scales(w, bits=6, rule=rule, impl=impl)
    assert torch.isnan(scales[2]) and torch.isfinite(scales[[0, 1, 3]]).all()
    reliability("FINE")


@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_triton_and_torch_paths_agree_on_non_finite_weights_forward_and_backward(bad, reliability):
    torch.manual_seed(1)
    x0, w0 = torch.randn(6, 32), torch.randn(9, 32)
    w0[4, 0] = bad
    outs = {}
    for impl in ("triton", "torch"):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = fake_quant_linear(x, w, bits=5, rule="maxabs", impl=impl)
        y.masked_fill(torch.isnan(y), 0.0).sum().backward()
        outs[impl] = (y.detach(), x.grad, w.grad)
    for a, b in zip(outs["triton"], outs["torch"]):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.allclose(a.nan_to_num(), b.nan_to_num(), atol=1e-5)
    reliability("FINE")


def test_export_refuses_non_finite_weights(tmp_path, reliability):
    from pgolf.artifact.export import export_model
    from pgolf.config import ModelConfig, QuantConfig
    from pgolf.model.gpt import GPT

    model = GPT(ModelConfig(vocab_size=64, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "mlp" in n).view(-1)[3] = float("inf")
    with pytest.raises(ValueError, match=r"not exporting .*model.pgolf: the weights .*mlp.* hold NaN or inf"):
        export_model(model, QuantConfig(), tmp_path / "model.pgolf")
    assert not (tmp_path / "model.pgolf").exists()
    reliability("CLEAR")


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("op", ["linear", "weight"])
def test_a_bad_temperature_is_refused_as_a_float_and_as_a_tensor(temperature, as_tensor, op, reliability):
    x, w = torch.randn(3, 16), torch.randn(4, 16, requires_grad=True)
    t = torch.tensor(temperature) if as_tensor else temperature
    with pytest.raises(ValueError, match=r"temperature must be finite and > 0"):
        if op == "linear":
            fake_quant_linear(x, w, bits=4, surrogate="softround", temperature=t, impl="torch")
        else:
            fake_quant_weight(w, bits=4, surrogate="softround", temperature=t)
    reliability("CLEAR")


def test_a_good_tensor_temperature_still_trains(reliability):
    x, w = torch.randn(3, 16), torch.randn(4, 16, requires_grad=True)
    fake_quant_linear(x, w, bits=4, surrogate="softround", temperature=torch.tensor(0.3), impl="triton").sum().backward()
    assert torch.isfinite(w.grad).all()
    reliability("FINE")


@pytest.mark.parametrize("schedule", [[[3.4, float("nan"), 2.0]], [[float("inf"), -4.7, 2.0]], [[1.0, 2.0]]])
def test_newton_schulz_refuses_bad_coefficients(schedule, reliability):
    with pytest.raises(ValueError, match=r"must be finite numbers|non-empty list of \(a, b, c\) triples"):
        ns_coefficients(schedule, 5)
    with pytest.raises(ValueError):
        newton_schulz(torch.randn(8, 8), steps=2, schedule=schedule, impl="torch")
    reliability("CLEAR")


@pytest.fixture(scope="module")
def joint():
    if not codec.available():
        pytest.skip("the codec extension is not built")
    rng = np.random.default_rng(0)
    tensors = [rng.integers(-3, 4, size=(4, 64)).astype(np.int8) for _ in range(3)]
    data, own = codec.rans_encode_set(tensors, 3)
    assert data is not None and own == [None] * 3
    return data, tensors


@pytest.mark.parametrize("sizes", [[256, -64, 576], [512, 256.0, 0], [768, True, 0], [-1, 769]])
def test_rans_decode_set_validates_counts(joint, sizes, reliability):
    data, _ = joint
    with pytest.raises(ValueError, match=r"sizes must be integers >= 0"):
        codec.rans_decode_set(data, sizes)
    reliability("CLEAR")


def test_rans_decode_set_round_trips_and_refuses_a_wrong_total(joint, reliability):
    data, tensors = joint
    parts = codec.rans_decode_set(data, [t.size for t in tensors])
    assert all(np.array_equal(p, t.reshape(-1)) for p, t in zip(parts, tensors))
    with pytest.raises(codec.CodecError, match=r"holds 768 values, its tensors need 769"):
        codec.rans_decode_set(data, [256, 256, 257])
    reliability("CLEAR")


def test_the_raw_codec_says_it_carries_no_checksum(reliability):
    assert "carry no checksum" in codec.__doc__ and "artifact file's checksum" in codec.__doc__
    reliability("FINE")
