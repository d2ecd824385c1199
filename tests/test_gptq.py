"""GPTQ (pgolf.quant.gptq) against round-to-nearest and against an independent formulation."""
import pytest
import torch

from pgolf.quant.gptq import GPTQError, gptq_codes
from triton_kernels.fake_quant import quantize_codes, row_scales_reference


def _weight(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.linspace(0.5, 2.0, cols)


def _correlated_inputs(tokens, cols, seed=1):
    """Activations with strong correlations between inputs (a low-rank mix plus noise), like real ones."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(cols // 4 + 1, cols, generator=g)
    return torch.randn(tokens, basis.shape[0], generator=g) @ basis + 0.1 * torch.randn(tokens, cols, generator=g)


def _obs_reference(w, h, scale, bits, damp=0.01):
    """GPTQ written the other way (no act-order, no blocks, no Cholesky): after rounding column j,
    the optimal update of the later columns is ``-e_j Hinv[j, k] / Hinv[j, j]`` and the inverse
    Hessian of the remaining columns is the Schur downdate ``Hinv - Hinv[:, j] Hinv[j, :] / Hinv[j, j]``.
    Float64 throughout."""
    qmax = 2 ** (bits - 1) - 1
    w = w.double().clone()
    h = h.double().clone()
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    h_inv = torch.linalg.inv(h)
    s = scale.double()
    codes = torch.zeros(w.shape, dtype=torch.int8)
    for j in range(w.shape[1]):
        q = torch.round(w[:, j] / s).clamp(-qmax, qmax)
        codes[:, j] = q.to(torch.int8)
        e = w[:, j] - q * s
        w[:, j + 1:] -= e[:, None] * (h_inv[j, j + 1:] / h_inv[j, j])[None, :]
        h_inv = h_inv - torch.outer(h_inv[:, j], h_inv[j, :]) / h_inv[j, j]
    return codes


def _output_error(w, codes, scale, x):
    return torch.linalg.norm((w - codes.float() * scale.float()[:, None]) @ x.T).item()


@pytest.mark.parametrize("bits", [5, 6, 8])
@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("shape,block", [((24, 40), 128), ((17, 33), 8), ((64, 16), 5)])
def test_identity_hessian_is_round_to_nearest_exactly(bits, act_order, shape, block):
    w = _weight(*shape)
    scale = row_scales_reference(w, bits=bits, rule="sigma", sigma=3.0)
    codes = gptq_codes(w, torch.eye(shape[1]), scale, bits, block=block, act_order=act_order)
    assert torch.equal(codes, quantize_codes(w, scale, bits))


def test_scaled_identity_and_any_damping_stay_round_to_nearest():
    w = _weight(20, 30)
    scale = row_scales_reference(w, bits=6, rule="maxabs")
    for h, damp in ((7.5 * torch.eye(30), 0.01), (torch.eye(30), 0.5)):
        assert torch.equal(gptq_codes(w, h, scale, 6, damp=damp), quantize_codes(w, scale, 6))


@pytest.mark.parametrize("bits", [4, 6])
def test_matches_the_schur_downdate_formulation(bits):
    """No act-order, one column at a time: the Cholesky-row update equals the OBS downdate."""
    w = _weight(32, 48, seed=3)
    x = _correlated_inputs(400, 48)
    h = x.T @ x
    scale = row_scales_reference(w, bits=bits, rule="sigma", sigma=3.0)
    ours = gptq_codes(w, h, scale, bits, act_order=False, block=7)
    ref = _obs_reference(w, h, scale, bits)
    agree = (ours == ref).float().mean().item()
    assert agree > 0.995, agree  # float32 vs float64: a rare tie may round the other way
    err_ours, err_ref = _output_error(w, ours, scale, x), _output_error(w, ref, scale, x)
    assert abs(err_ours - err_ref) / err_ref < 2e-3


@pytest.mark.parametrize("act_order", [True, False])
def test_lower_output_error_than_round_to_nearest_on_correlated_inputs(act_order):
    w = _weight(64, 96, seed=5)
    x = _correlated_inputs(1000, 96, seed=6)
    scale = row_scales_reference(w, bits=5, rule="sigma", sigma=3.0)
    gptq = gptq_codes(w, x.T @ x, scale, 5, act_order=act_order, block=32)
    rtn = quantize_codes(w, scale, 5)
    assert _output_error(w, gptq, scale, x) < 0.8 * _output_error(w, rtn, scale, x)


def test_blocking_does_not_change_the_result_beyond_rounding():
    w = _weight(40, 64, seed=7)
    x = _correlated_inputs(500, 64, seed=8)
    scale = row_scales_reference(w, bits=6, rule="sigma", sigma=3.0)
    a = gptq_codes(w, x.T @ x, scale, 6, block=64)
    b = gptq_codes(w, x.T @ x, scale, 6, block=3)
    assert (a == b).float().mean().item() > 0.995


def test_dead_columns_get_zero_codes_and_no_error():
    w = _weight(10, 12)
    x = _correlated_inputs(200, 12)
    x[:, [2, 7]] = 0.0  # inputs that are never active
    scale = row_scales_reference(w, bits=6, rule="maxabs")
    codes = gptq_codes(w, x.T @ x, scale, 6)
    assert torch.count_nonzero(codes[:, [2, 7]]) == 0


def test_codes_stay_in_the_symmetric_range():
    w = _weight(16, 24) * 50
    x = _correlated_inputs(300, 24)
    scale = row_scales_reference(w, bits=5, rule="sigma", sigma=1.0)  # heavy clipping
    codes = gptq_codes(w, x.T @ x, scale, 5)
    assert codes.abs().max().item() <= 15


@pytest.mark.parametrize("hessian,match", [
    (torch.eye(5), "Hessian has shape"),
    (torch.full((6, 6), float("nan")), "non-finite"),
    (-torch.eye(6) * 4 + torch.ones(6, 6), "not positive definite"),
])
def test_unusable_hessians_raise_clear_errors(hessian, match):
    w = _weight(4, 6)
    scale = row_scales_reference(w, bits=6, rule="maxabs")
    with pytest.raises(GPTQError, match=match):
        gptq_codes(w, hessian, scale, 6)
