"""Every Triton kernel compiles for Hopper (sm_90: H100 / H200) at the tiles its launcher uses there.

No GPU is needed: ``triton.compile`` lowers a kernel to PTX and runs the ``ptxas`` bundled with the
triton wheel for a given target. This catches what the interpreter cannot see -- code generation
failures, register spills, shared memory over the per-block limit, 16-bit dots that do not become
``wgmma``, and (for the quantiser) code generation folding away the rounding trick -- before a GPU
session pays for it. It says nothing about speed, and does not replace running on a GPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triton_kernels.fake_quant import dw_tile_config, weight_block
from triton_kernels.neural_cache import cache_tiles
from triton_kernels.lora import LoraLayout
from triton_kernels.lora.ops import elementwise_block, grad_tiles, shrink_expand_tiles
from triton_kernels.newton_schulz import ns_tiles
from triton_kernels.softcap_ce import ce_tiles
from triton_kernels.softcap_ce.ops import FIXED_MAX_SOFTCAP

triton = pytest.importorskip("triton")
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
WORKER = Path(__file__).with_name("sm90_compile_worker.py")
SHARED_LIMIT = 232_448  # bytes of shared memory one block may use on sm_90 (227 KiB)
TOKENS = 65_536
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

pytestmark = [
    pytest.mark.skipif(not (NVIDIA_BIN / "ptxas").exists() or not (NVIDIA_BIN / "cuobjdump").exists(),
                       reason=f"this triton build has no bundled ptxas / cuobjdump in {NVIDIA_BIN}"),
    pytest.mark.slow,
]


def _ptr(dtype):
    return ["ptr", TYPES[dtype]]


def _weight_spec(w_dtype, out_dtype, rule_id, rows, cols, write=True):
    args = [("w_ptr", _ptr(w_dtype)), ("s_in_ptr", ["ptr", "fp16"]), ("act_ptr", ["ptr", "i1"]),
            ("s_ptr", ["ptr", "fp16"]), ("wq_ptr", _ptr(out_dtype)), ("K", ["int", cols]),
            ("stride_w", ["int", cols]), ("stride_wq", ["int", cols if write else 0]), ("sigma", ["float", 12.85]),
            ("QMAX", ["const", 31]), ("RULE", ["const", rule_id]), ("WRITE_WQ", ["const", write]),
            ("BLOCK", ["const", weight_block(cols, on_gpu=True)])]
    return dict(id=f"fq_weight-{TYPES[w_dtype]}-to-{TYPES[out_dtype]}-rule{rule_id}-{rows}x{cols}-write{int(write)}",
                module="triton_kernels.fake_quant.kernels", kernel="_fq_weight_kernel", args=args,
                num_warps=4, num_stages=3, quantises=write)


def _dw_spec(dtype, n, k, soft):
    cfg = dw_tile_config(dtype, on_gpu=True)
    args = [("dy_ptr", _ptr(dtype)), ("x_ptr", _ptr(dtype)), ("w_ptr", ["ptr", "fp32"]), ("s_ptr", ["ptr", "fp16"]),
            ("act_ptr", ["ptr", "i1"]), ("t_ptr", ["ptr", "fp32"]), ("dw_ptr", ["ptr", "fp32"]),
            ("M", ["int", TOKENS]), ("N", ["int", n]), ("K", ["int", k]), ("m_per_split", ["int", 4096]),
            ("stride_dym", ["int", n]), ("stride_xm", ["int", k]), ("stride_wn", ["int", k]),
            ("stride_dws", ["int", n * k]), ("stride_dwn", ["int", k]),
            ("QMAX", ["const", 31]), ("SOFT", ["const", soft]),
            ("PREC", ["const", cfg["PREC"]]),  # what the launcher passes (test_fake_quant_kernel.py)
            ("BM", ["const", cfg["BM"]]), ("BN", ["const", cfg["BN"]]), ("BK", ["const", cfg["BK"]])]
    return dict(id=f"fq_dw-{TYPES[dtype]}-{n}x{k}-soft{int(soft)}", module="triton_kernels.fake_quant.kernels",
                kernel="_fq_linear_dw_kernel", args=args, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                tensor_cores=dtype != torch.float32)


def _ns_specs(dtype, b, m, n):
    """The three launches of one Newton-Schulz step on a wide (b, m, n) stack."""
    t = ns_tiles(m, n)
    prec = ["const", "ieee" if dtype == torch.float32 else None]
    ptr = _ptr(dtype)

    def strides(prefix, rows, cols):
        return [(f"stride_{prefix}b", ["int", rows * cols]), (f"stride_{prefix}m", ["int", cols]),
                (f"stride_{prefix}{'k' if prefix == 'x' else 'n'}", ["int", 1])]

    def sym(name, k, has_c, bk):
        c = strides("c", m, m) if has_c else [("stride_cb", ["int", 0]), ("stride_cm", ["int", 0]),
                                               ("stride_cn", ["int", 0])]
        args = ([("x_ptr", ptr), ("c_ptr", ptr), ("out_ptr", ptr), ("M", ["int", m]), ("K", ["int", k])]
                + strides("x", m, k) + c + strides("o", m, m)
                + [("alpha", ["float", 2.0]), ("beta", ["float", -4.0]), ("HAS_C", ["const", has_c]),
                   ("PRECISION", prec), ("BM", ["const", t["BM"]]), ("BK", ["const", bk])])
        return dict(id=f"ns_{name}-{TYPES[dtype]}-{b}x{m}x{n}", kernel="_ns_sym_kernel", args=args)

    update_args = ([("b_ptr", ptr), ("x_ptr", ptr), ("out_ptr", ptr), ("M", ["int", m]), ("N", ["int", n])]
                   + [("stride_bb", ["int", m * m]), ("stride_bm", ["int", m]), ("stride_bk", ["int", 1])]
                   + [("stride_xb", ["int", m * n]), ("stride_xm", ["int", n]), ("stride_xn", ["int", 1])]
                   + [("stride_ob", ["int", m * n]), ("stride_om", ["int", n]), ("stride_on", ["int", 1])]
                   + [("a_coef", ["float", 3.0]), ("PRECISION", prec), ("BM", ["const", t["BM"]]),
                      ("BN", ["const", t["BN"]]), ("BK", ["const", t["BK_SQ"]])])
    specs = [sym("gram", n, False, t["BK_GRAM"]), sym("square", m, True, t["BK_SQ"]),
             dict(id=f"ns_update-{TYPES[dtype]}-{b}x{m}x{n}", kernel="_ns_update_kernel", args=update_args)]
    for s in specs:
        s.update(module="triton_kernels._newton_schulz_kernels", num_warps=4, num_stages=3,
                 tensor_cores=dtype != torch.float32)
    return specs


def _cache_spec(dtype, similarity, seq, queries=2048, keys=1 << 20, dim=512, sm_count=132):
    """The neural-cache lookup at the tiles its launcher picks on an H100/H200 (132 SMs)."""
    t = cache_tiles(queries, keys, dim, dtype, sm_count=sm_count)
    idx = ["ptr", "i64"]
    args = [("q_ptr", _ptr(dtype)), ("k_ptr", _ptr(dtype)), ("lab_ptr", idx), ("tgt_ptr", idx),
            ("kseq_ptr", idx), ("qseq_ptr", idx), ("qscale_ptr", ["ptr", "fp32"]), ("den_ptr", ["ptr", "fp32"]),
            ("num_ptr", ["ptr", "fp32"]), ("cnt_ptr", ["ptr", "i32"]), ("Q", ["int", queries]), ("N", ["int", keys]),
            ("D", ["int", dim]), ("keys_per_split", ["int", t["keys_per_split"]]), ("stride_q", ["int", dim]),
            ("stride_k", ["int", dim]), ("COSINE", ["const", similarity == "cosine"]), ("HAS_SEQ", ["const", seq]),
            ("PRECISION", ["const", "ieee" if dtype == torch.float32 else None]),
            ("BQ", ["const", t["BQ"]]), ("BN", ["const", t["BN"]]), ("BD", ["const", t["BD"]])]
    return dict(id=f"cache_lookup-{TYPES[dtype]}-{similarity}-seq{int(seq)}-{queries}x{keys}x{dim}",
                module="triton_kernels.neural_cache.kernels", kernel="_cache_lookup_fwd_kernel", args=args,
                num_warps=t["num_warps"], num_stages=t["num_stages"], tensor_cores=dtype != torch.float32)


CE_ROWS = 98_304  # rows (tokens) of one record-stack step per GPU: only the launch grid, no kernel argument


def _softcap_ce_specs(vocab, softcap, dtype=torch.bfloat16):
    """The forward and backward launches on logits ``[CE_ROWS, vocab]`` (softcap 0: none)."""
    t = ce_tiles(vocab, on_gpu=True)
    common = [("V", ["int", vocab]), ("stride_l", ["int", vocab])]
    tail = [("softcap", ["float", softcap]), ("ignore_index", ["int", -100]), ("SOFTCAP", ["const", softcap > 0])]
    fwd = ([("l_ptr", _ptr(dtype)), ("y_ptr", ["ptr", "i64"]), ("loss_ptr", ["ptr", "fp32"]),
            ("lse_ptr", ["ptr", "fp32"])] + common + tail
           + [("FIXED_MAX", ["const", 0 < softcap <= FIXED_MAX_SOFTCAP]), ("BLOCK_V", ["const", t["BLOCK_V"]])])
    bwd = ([("l_ptr", _ptr(dtype)), ("y_ptr", ["ptr", "i64"]), ("lse_ptr", ["ptr", "fp32"]),
            ("dloss_ptr", ["ptr", "fp32"]), ("dlse_ptr", ["ptr", "fp32"]), ("dl_ptr", _ptr(dtype))]
           + common + [("stride_dl", ["int", vocab])] + tail + [("BLOCK_V", ["const", t["BLOCK_V"]])])
    name = f"{TYPES[dtype]}-{CE_ROWS}x{vocab}-softcap{softcap:g}"
    return [dict(id=f"softcap_ce_{kind}-{name}", module="triton_kernels.softcap_ce.kernels",
                 kernel=f"_softcap_ce_{kind}_kernel", args=args, num_warps=t["num_warps"], num_stages=3)
            for kind, args in (("fwd", fwd), ("bwd", bwd))]


LORA_DOCS, LORA_T, LORA_IN = 64, 2048, 512  # the record's TTT batch: 64 documents, windows up to 2048, d = 512


def _lora_specs(rank, n_out, has_base):
    """The three shrink-expand launches (forward, dX + g, h) and the dA/dB launch of one adapter, bf16
    activations with fp32 adapters (contiguous (D, r, in) / (D, out, r)), int32 lengths."""
    T, K, R, N = LORA_T, LORA_IN, rank, n_out
    se = shrink_expand_tiles(R, torch.bfloat16, on_gpu=True)
    bf, f32, i32 = _ptr(torch.bfloat16), _ptr(torch.float32), ["ptr", "i32"]

    def strides(name, *values):  # "pbtk" -> s_pb, s_pt, s_pk
        return [(f"s_{name[0]}{c}", ["int", v]) for c, v in zip(name[1:], values)]

    def shrink_expand(name, kk, nn, u, v, mid, has_base, store, expand):
        args = ([("p_ptr", bf), ("u_ptr", f32), ("v_ptr", f32), ("base_ptr", bf), ("out_ptr", bf), ("mid_ptr", bf),
                 ("len_ptr", i32), ("T", ["int", T]), ("K", ["int", kk]), ("R", ["int", R]), ("N", ["int", nn])]
                + strides("pbtk", T * kk, kk, 1) + strides("ubkr", *u) + strides("vbrn", *v)
                + strides("obtn", *((T * nn, nn, 1) if expand else (0, 0, 0))) + strides("mbtr", *mid)
                + [("scale", ["float", 1.8]), ("HAS_BASE", ["const", has_base]), ("HAS_LEN", ["const", True]),
                   ("STORE_MID", ["const", store]), ("EXPAND", ["const", expand]), ("PRECISION", ["const", None])]
                + [(k, ["const", se[k]]) for k in ("BT", "BR", "BK", "BN")])
        return dict(id=f"lora_{name}-bf16-r{R}-{K}x{N}" + (f"-base{int(has_base)}" if expand else ""), kernel="_lora_shrink_expand_kernel",
                    args=args, num_warps=se["num_warps"], num_stages=se["num_stages"])

    gt = grad_tiles(R, torch.bfloat16, on_gpu=True)
    grad_args = ([("g_ptr", bf), ("x_ptr", bf), ("dy_ptr", bf), ("h_ptr", bf), ("da_ptr", f32), ("db_ptr", f32),
                  ("len_ptr", i32), ("T", ["int", T]), ("K", ["int", K]), ("R", ["int", R]), ("N", ["int", N]),
                  ("N_A_TILES", ["int", -(-K // gt["BN"])])]
                 + strides("gbtr", T * R, R, 1) + strides("xbtk", T * K, K, 1) + strides("ybtn", T * N, N, 1)
                 + strides("hbtr", T * R, R, 1) + strides("abrk", R * K, K, 1) + strides("bbnr", N * R, R, 1)
                 + [("scale", ["float", 1.8]), ("HAS_LEN", ["const", True]), ("PRECISION", ["const", None])]
                 + [(k, ["const", gt[k]]) for k in ("BT", "BR", "BN")])
    specs = [
        shrink_expand("fwd", K, N, (R * K, 1, K), (N * R, 1, R), (0, 0, 0), has_base, False, True),
        shrink_expand("dx", N, K, (N * R, R, 1), (R * K, K, 1), (T * R, R, 1), has_base, True, True),
    ]
    if has_base:  # the h and dA/dB launches do not depend on the base weight: one spec per shape
        specs += [shrink_expand("h", K, 0, (R * K, 1, K), (0, 0, 0), (T * R, R, 1), False, True, False),
                  dict(id=f"lora_grad-bf16-r{R}-{K}x{N}", kernel="_lora_grad_kernel", args=grad_args,
                       num_warps=gt["num_warps"], num_stages=gt["num_stages"])]
    for spec in specs:
        spec.update(module="triton_kernels.lora.kernels", tensor_cores=True)
    return specs


def _lora_optimizer_specs(rank):
    """The AdamW and reset launches over the flat buffer of the record's 86 adapters (17 x q, k, v, o, mlp + head)."""
    layout = LoraLayout(((rank, 512, 512), (rank, 512, 256), (rank, 512, 256), (rank, 512, 512), (rank, 512, 512))
                        * 17 + ((rank, 512, 8192),))
    n, eb = layout.numel, elementwise_block(on_gpu=True)
    f32 = _ptr(torch.float32)
    adamw = ([("p_ptr", f32), ("g_ptr", f32), ("v_ptr", f32), ("step_ptr", ["ptr", "i32"]), ("log_beta2_ptr", ["ptr", "fp64"]),
              ("N", ["int", n]), ("s_p", ["int", n]), ("s_g", ["int", n]), ("s_v", ["int", n])]
             + [(k, ["float", v]) for k, v in (("lr", 1e-4), ("beta2", 0.99), ("one_minus_beta2", 0.01),
                                               ("decay", 1 - 5e-5), ("eps", 1e-10))]
             + [("BLOCK", ["const", eb["BLOCK"]])])
    reset = ([("p_ptr", f32), ("v_ptr", f32), ("step_ptr", ["ptr", "i32"]), ("docs_ptr", ["ptr", "i1"]), ("init_ptr", f32),
              ("N", ["int", n]), ("KEEP", ["int", layout.a_numel]), ("s_p", ["int", n]), ("s_v", ["int", n]),
              ("s_i", ["int", layout.a_numel]), ("HAS_INIT", ["const", True]), ("BLOCK", ["const", eb["BLOCK"]])])
    return [dict(id=f"lora_{name}-r{rank}", module="triton_kernels.lora.kernels", kernel=kernel, args=args,
                 num_warps=eb["num_warps"], num_stages=1)
            for name, kernel, args in (("adamw", "_lora_adamw_kernel", adamw), ("reset", "_lora_reset_kernel", reset))]


SPECS = (
    [_weight_spec(torch.float32, torch.bfloat16, rule, 2048, 512) for rule in (0, 1, 2)]
    + [_weight_spec(torch.float32, torch.bfloat16, 2, 512, 2048), _weight_spec(torch.bfloat16, torch.bfloat16, 1, 512, 512),
       _weight_spec(torch.float32, torch.float32, 1, 512, 512), _weight_spec(torch.float32, torch.bfloat16, 2, 512, 2048,
                                                                            write=False)]
    + [_dw_spec(torch.bfloat16, n, k, soft) for (n, k), soft in (((512, 512), False), ((2048, 512), True),
                                                                  ((512, 2048), False))]
    + [_dw_spec(torch.float32, 512, 512, True)]
    # record-stack banks in their wide orientation: 512x512, 256x512, 512x2048 (2048x512 transposed)
    + [s for m, n in ((512, 512), (256, 512), (512, 2048)) for s in _ns_specs(torch.bfloat16, 11, m, n)]
    + _ns_specs(torch.float32, 3, 256, 512)
    + [_cache_spec(torch.bfloat16, sim, seq) for sim, seq in (("dot", False), ("dot", True), ("cosine", True))]
    + [_cache_spec(torch.float16, "cosine", False, keys=2048), _cache_spec(torch.float32, "dot", True, queries=7)]
    + [s for vocab, c in ((8192, 30.0), (1024, 30.0), (8192, 0.0)) for s in _softcap_ce_specs(vocab, c)]
    # the record's TTT adapters: q 512->512, k/v 512->256 on a base W; o, mlp bypass deltas; the head 512->8192
    + [s for r in (80, 96) for n, base in ((512, True), (256, True), (512, False), (8192, True))
       for s in _lora_specs(r, n, base)]
    + [s for r in (80, 96) for s in _lora_optimizer_specs(r)]
)


@pytest.fixture(scope="module")
def compiled(request) -> dict:
    # only the specs of the selected tests, so `-k softcap_ce` does not compile every kernel
    selected = {item.callspec.params["spec"]["id"] for item in request.session.items
                if "spec" in getattr(getattr(item, "callspec", None), "params", {})}
    specs = [{k: v for k, v in s.items() if k not in ("quantises", "tensor_cores")} for s in SPECS
             if s["id"] in selected]
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run([sys.executable, str(WORKER)], input=json.dumps(specs), capture_output=True, text=True,
                          env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r["id"]: r for r in json.loads(proc.stdout)}


@pytest.mark.parametrize("spec", SPECS, ids=[s["id"] for s in SPECS])
def test_kernel_compiles_for_sm90_without_spills(compiled, spec):
    r = compiled[spec["id"]]
    assert r["stack"] == 0 and r["local"] == 0, f"register spills: {r}"
    assert r["reg"] <= 255
    assert r["dynamic_shared"] + r["shared"] <= SHARED_LIMIT, r
    if spec.get("tensor_cores"):
        assert r["wgmma"] > 0, "a 16-bit dot that does not use Hopper's wgmma"
    if spec.get("quantises"):
        assert r["div_rn"] > 0, "w / s must be an IEEE division like torch's"
        assert r["rne_add"] > 0 and r["rne_sub"] == r["rne_add"], f"the rounding trick was folded: {r}"
