"""The quantiser's math, the export policy, and the QAT == export identity."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import QuantConfig
from pgolf.model.layers import CastedLinear
from pgolf.model.roles import CONTROL, EMBED, HEAD, MATRIX, parameter_roles
from pgolf.quant.qat import enable_qat, set_qat_state
from pgolf.quant.qtensor import QTensor
from pgolf.quant.plan import plan
from pgolf.quant.rtn import dequantize_state_dict, quantize_state_dict, quantize_tensor
from triton_kernels import fake_quant as fq

RULE_KW = dict(percentile=99.0, sigma=2.5)


def _weight(rows=24, cols=33, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[2, 3], w[9, 0] = 0.8, -0.6
    w[5] = 0.0
    return w


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("rule", fq.RULES)
def test_fake_quant_equals_quantize_dequantize(bits, rule):
    w = _weight()
    q = quantize_tensor(w, bits=bits, rule=rule, impl="torch", **RULE_KW)
    scale = fq.row_scales_reference(w, bits=bits, rule=rule, **RULE_KW)
    assert torch.equal(q.scale, scale) and q.codes.dtype == torch.int8 and q.bits == bits
    qmax = fq.qmax_for(bits)
    assert q.codes.abs().max() <= qmax
    # written out here, not through the quantiser: round half to even of w / fp16 scale, clamped
    assert torch.equal(q.codes, torch.round(w / scale.float()[:, None]).clamp(-qmax, qmax).to(torch.int8))
    assert torch.equal(q.dequantize(), q.codes.float() * scale.float()[:, None])
    assert torch.equal(fq.fake_quant_reference(w, scale, bits), q.dequantize())  # atol = 0


def test_scale_rules_follow_their_definitions():
    w = _weight()
    q = 0.9999984
    official = torch.quantile(w.abs(), q, dim=1)  # the official int8 exporter's clip
    got = fq.row_scales_reference(w, bits=8, rule="percentile", percentile=99.99984)
    expect = (official / 127).clamp_min(fq.MIN_SCALE).half()
    assert torch.equal(got, expect)
    std = w.double().std(dim=1, correction=0).float()
    got = fq.row_scales_reference(w, bits=6, rule="sigma", sigma=3.0)
    assert torch.equal(got, (std * 3.0 / 31).clamp_min(fq.MIN_SCALE).half())
    got = fq.row_scales_reference(w, bits=5, rule="maxabs")
    assert torch.equal(got, (w.abs().amax(1) / 15).clamp_min(fq.MIN_SCALE).half())
    assert got[5] == fq.MIN_SCALE and (fq.quantize_codes(w, got, 5)[5] == 0).all()  # zero row


def test_scale_is_the_fp16_value_used_for_codes():
    """Codes are computed with the fp16-rounded scale, not the float32 one (no export gap)."""
    w = torch.full((1, 8), 0.0)
    w[0, :] = torch.tensor([1.0, 0.3, -0.7, 0.11, 0.52, -0.93, 0.04, 0.61])
    s16 = fq.row_scales_reference(w, bits=6, rule="maxabs")
    assert s16.float() != w.abs().max() / 31  # the fp16 rounding is real here
    codes = fq.quantize_codes(w, s16, 6)
    assert torch.equal(codes, torch.round(w / s16.float()).clamp(-31, 31).to(torch.int8))


def test_plan_policy_and_thresholds():
    sd = {
        "blocks.0.attn.c_q.weight": torch.zeros(64, 64),
        "blocks.0.mlp.fc.weight": torch.zeros(128, 64),
        "blocks.0.mlp.proj.weight": torch.zeros(64, 128),
        "tok_emb.weight": torch.zeros(100, 64),
        "blocks.0.attn_scale": torch.zeros(64),        # 1-D: float
        "skip_weights": torch.zeros(2, 64),             # small 2-D: float
        "step": torch.zeros(64, 64, dtype=torch.int64),  # not float: passthrough
    }
    roles = {"blocks.0.attn.c_q.weight": MATRIX, "blocks.0.mlp.fc.weight": MATRIX,
             "blocks.0.mlp.proj.weight": MATRIX, "tok_emb.weight": EMBED, "blocks.0.attn_scale": CONTROL,
             "skip_weights": CONTROL}  # "step" is no parameter (a buffer)
    qcfg = QuantConfig(bits=6, policy="mlp.proj=0,mlp=5,tok_emb=8", keep_float_max_numel=1000)
    assert plan(sd, qcfg, roles) == {
        "blocks.0.attn.c_q.weight": 6, "blocks.0.mlp.fc.weight": 5, "blocks.0.mlp.proj.weight": 0,
        "tok_emb.weight": 8, "blocks.0.attn_scale": 0, "skip_weights": 0, "step": 0,
    }
    big_control = {"resid_mix": torch.zeros(2, 4096)}  # 2-D and large, but a control gain: stays float
    assert plan(big_control, qcfg, {"resid_mix": CONTROL}) == {"resid_mix": 0}
    assert plan(big_control, qcfg, {"resid_mix": MATRIX}) == {"resid_mix": 6}


def test_roles_of_the_baseline_model_drive_plan_and_optimiser_split():
    """Roles are declared by the layers: block linears are matrices, the embedding is embed, an untied
    head is head, every other parameter (gains, mixes, skip weights) is control."""
    from pgolf.config import ModelConfig
    from pgolf.model.gpt import GPT
    from pgolf.optim.optimizers import parameter_groups

    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1,
                            tie_embeddings=False))
    roles = parameter_roles(model)
    assert roles["tok_emb.weight"] == EMBED and roles["lm_head.weight"] == HEAD
    assert {n for n, r in roles.items() if r == MATRIX} == {
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj",
                                                             "mlp.fc", "mlp.proj")}
    assert {n for n, r in roles.items() if r == CONTROL} == {"skip_weights"} | {
        f"blocks.{i}.{p}" for i in range(2) for p in ("attn.q_gain", "attn_scale", "mlp_scale", "resid_mix")}
    groups = parameter_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in groups["head"]] == ["lm_head.weight"]
    assert {names[id(p)] for p in groups["scalar"]} == {n for n, r in roles.items() if r == CONTROL}


def test_state_dict_round_trip():
    g = torch.Generator().manual_seed(0)
    sd = {"a.weight": torch.randn(40, 30, generator=g), "a.gain": torch.randn(30, generator=g),
          "small.weight": torch.randn(3, 4, generator=g), "count": torch.arange(5)}
    qcfg = QuantConfig(bits=6, scale_rule="sigma", clip_sigma=4.0, keep_float_max_numel=100)
    roles = {"a.weight": MATRIX, "a.gain": CONTROL, "small.weight": MATRIX}
    entries = quantize_state_dict(sd, qcfg, roles)
    assert list(entries) == list(sd)
    assert isinstance(entries["a.weight"], QTensor) and entries["a.weight"].bits == 6
    assert entries["a.gain"].dtype == torch.float32 and torch.equal(entries["a.gain"], sd["a.gain"])
    assert torch.equal(entries["count"], sd["count"])
    half = quantize_state_dict(sd, qcfg, roles, keep_float_dtype=torch.float16)
    assert half["small.weight"].dtype == torch.float16
    back = dequantize_state_dict(half, reference=sd)
    assert back["small.weight"].dtype == torch.float32
    back = dequantize_state_dict(entries)
    scale = fq.row_scales_reference(sd["a.weight"], bits=6, rule="sigma", sigma=4.0)
    assert torch.equal(back["a.weight"], fq.fake_quant_reference(sd["a.weight"], scale, 6))
    for name in ("a.gain", "small.weight", "count"):
        assert torch.equal(back[name], sd[name])


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = CastedLinear(20, 48)
        self.mid = CastedLinear(48, 40)
        self.proj = CastedLinear(40, 12)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 12))

    def forward(self, x):
        return self.proj(F.relu(self.mid(F.relu(self.fc(x))))) * self.gain


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("bits", [5, 6, 8])
@pytest.mark.parametrize("rule", fq.RULES)
def test_qat_weight_equals_exported_weight(impl, bits, rule):
    """QAT forward of a CastedLinear computes with exactly dequantize(quantize(W)) (atol = 0)."""
    torch.manual_seed(0)
    layer = CastedLinear(33, 24)
    with torch.no_grad():
        layer.weight.copy_(_weight())
    qcfg = QuantConfig(bits=bits, scale_rule=rule, clip_percentile=99.0, clip_sigma=2.5, keep_float_max_numel=0)
    assert enable_qat(layer, qcfg, impl=impl) == {"": bits}
    set_qat_state(layer, active=True, temperature=0.5)
    exported = dequantize_state_dict(quantize_state_dict(layer.state_dict(), qcfg, parameter_roles(layer)))["weight"]
    used = layer(torch.eye(33)).T  # x = I reads the weight the forward multiplies with
    assert torch.equal(used, exported)
    set_qat_state(layer, active=False)
    assert torch.equal(layer(torch.eye(33)).T, layer.weight.detach())


@pytest.mark.parametrize("rule", fq.RULES)
def test_qat_model_logits_equal_exported_model_logits(rule):
    torch.manual_seed(1)
    model = _MLP()
    qcfg = QuantConfig(bits=6, policy="proj=8,mid=5", scale_rule=rule, clip_percentile=99.0, clip_sigma=2.5,
                       keep_float_max_numel=100)
    assert enable_qat(model, qcfg, impl="torch") == {"fc": 6, "mid": 5, "proj": 8}
    set_qat_state(model, active=True, temperature=1.0)
    x = torch.randn(7, 20)
    with torch.no_grad():
        qat_logits = model(x)
        loaded = _MLP()
        loaded.load_state_dict(dequantize_state_dict(quantize_state_dict(model.state_dict(), qcfg,
                                                                          parameter_roles(model))))
        assert torch.equal(loaded(x), qat_logits)
        set_qat_state(model, active=False)
        assert not torch.equal(model(x), qat_logits)  # quantisation does change the logits
