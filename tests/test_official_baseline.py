"""The ``baseline`` preset is the official ``train_gpt.py``: same tokens, numerics, export and score.

Golden numbers come from running the official script (openai/parameter-golf ``train_gpt.py`` at the
commit mirrored for this project) on a CPU, torch 2.13.0+cpu, one thread (``OMP_NUM_THREADS=1``),
with these shims in a temporary copy and nothing else changed: no ``torch.compile`` (neither the
model nor ``zeropower_via_newtonschulz5``: eager, as pgolf runs here), ``device = cpu`` instead of
the CUDA check, ``torch.cuda.synchronize()`` -> ``pass``, the four SDP backend switches, the
``nvidia-smi`` log and the peak-memory log line removed, and two extra prints of ``train_loss.item()``
and of ``(q_val_loss, q_val_bpb)`` with ``repr`` (full precision). Its ``torch.autocast("cuda")``
is inactive on a CPU, so both sides run the bf16 forward the official dtype layout gives there.
Data: ``tests/official_corpus.py`` shards (official 1024 tokenizer), run with::

    DATA_PATH=<shards> TOKENIZER_PATH=<fineweb_1024_bpe.model> VOCAB_SIZE=1024 NUM_LAYERS=2 MODEL_DIM=96
    NUM_HEADS=2 NUM_KV_HEADS=1 MLP_MULT=2 TRAIN_SEQ_LEN=512 TRAIN_BATCH_TOKENS=4096 ITERATIONS=20
    WARMDOWN_ITERS=10 WARMUP_STEPS=0 MAX_WALLCLOCK_SECONDS=0 VAL_LOSS_EVERY=0 VAL_BATCH_SIZE=16384

(one process: 8 micro-steps of one 512-token sequence per step; RoPE positions above 256 round in
bf16; the 98,304-entry embedding is int8-quantised, the rest passes through as fp16/fp32).
"""
import hashlib

import pytest
import torch

from official_corpus import build_official_shards
from pgolf.config import load_config
from pgolf.pipeline import run_training
from pgolf.train.runlog import read_metrics

OFFICIAL_ENV = {
    "VOCAB_SIZE": "1024", "NUM_LAYERS": "2", "MODEL_DIM": "96", "NUM_HEADS": "2", "NUM_KV_HEADS": "1",
    "MLP_MULT": "2", "TRAIN_SEQ_LEN": "512", "TRAIN_BATCH_TOKENS": "4096", "ITERATIONS": "20",
    "WARMDOWN_ITERS": "10", "WARMUP_STEPS": "0", "MAX_WALLCLOCK_SECONDS": "0", "VAL_LOSS_EVERY": "0",
    "VAL_BATCH_SIZE": "16384", "TRAIN_LOG_EVERY": "1",
}
# train_loss of steps 1..20 as the official script computed them (float32, printed with repr).
GOLDEN_LOSSES = [
    6.930023670196533, 6.467493057250977, 5.517157077789307, 5.2636871337890625, 5.081951141357422,
    4.981324672698975, 4.894063949584961, 4.829349994659424, 4.787907600402832, 4.661572456359863,
    4.591475963592529, 4.420056343078613, 4.320019721984863, 4.208102703094482, 4.19598388671875,
    4.122419357299805, 4.0956220626831055, 4.041134357452393, 4.044161319732666, 4.0220489501953125,
]
GOLDEN_PTZ_SHA256 = "eb600844076a81e5ca9a5aba4af53d9396a951953d48eaeb16eaa40af5fd29fe"
GOLDEN_PTZ_BYTES = 321061
GOLDEN_ROUNDTRIP = (4.020029735565186, 1.646210558503019)  # final_int8_zlib_roundtrip val_loss, val_bpb
GOLDEN_EXACT_LINE = "final_int8_zlib_roundtrip_exact val_loss:4.02002974 val_bpb:1.64621056"


@pytest.fixture(scope="module")
def official_shards(tmp_path_factory, sp1024_path):
    return build_official_shards(tmp_path_factory.mktemp("official_shards"), sp1024_path)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the golden run's thread count: CPU reductions split by thread
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_baseline_preset_is_the_official_script_step_for_step(official_shards, sp1024_path, tmp_path, one_thread):
    """20 steps with 8 micro-steps each: every train loss, the exported file and the printed
    round-trip score equal the official run's bit for bit."""
    env = {**OFFICIAL_ENV, "DATA_PATH": str(official_shards), "TOKENIZER_PATH": str(sp1024_path)}
    cfg = load_config("baseline", environ=env, sets=[f"train.run_dir={tmp_path}", "train.checkpoint_every=0"])
    result = run_training(cfg, echo=False)
    log = (tmp_path / "train.log").read_text()
    assert "world_size:1 grad_accum_steps:8" in log
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["event"] == "train"]
    assert losses == GOLDEN_LOSSES
    blob = (tmp_path / "final_model.int8.ptz").read_bytes()
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == (GOLDEN_PTZ_BYTES, GOLDEN_PTZ_SHA256)
    assert result["bytes_model"] == GOLDEN_PTZ_BYTES
    assert (result["val_loss"], result["val_bpb"]) == GOLDEN_ROUNDTRIP
    assert GOLDEN_EXACT_LINE in log


# The official quantize_state_dict_int8 on export_probe_state_dict(), torch.save'd into a BytesIO and
# zlib.compress'ed at level 9 (same official copy and torch as above); and the SHA-256 of its
# dequantize_state_dict_int8 output, every tensor as float32 bytes in sorted-name order.
PROBE_PTZ_SHA256 = "6b4f43925a8d4d005b3cfe9aedf1e30abf4028969f410f9ae0bfa26dab03e9a8"
PROBE_PTZ_BYTES = 199664
PROBE_DEQUANT_SHA256 = "3fd4d9c12d585cb1ea0edaa8add8a258e410fee1b8069cf9192dbb223d397fc7"


def test_official_int8_export_is_the_official_file_byte_for_byte(tmp_path):
    from official_corpus import export_probe_state_dict
    from pgolf.artifact.official_int8 import load_official_int8, save_official_int8

    state, roles = export_probe_state_dict()
    size = save_official_int8(tmp_path / "m.ptz", state, roles)
    blob = (tmp_path / "m.ptz").read_bytes()
    assert (size, len(blob), hashlib.sha256(blob).hexdigest()) == (PROBE_PTZ_BYTES, PROBE_PTZ_BYTES, PROBE_PTZ_SHA256)
    back = load_official_int8(tmp_path / "m.ptz")
    assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in state.items()}
    joined = b"".join(back[k].float().numpy().tobytes() for k in sorted(back))
    assert hashlib.sha256(joined).hexdigest() == PROBE_DEQUANT_SHA256


def test_official_int8_quantiser_rules():
    """The three official choices pgolf's own quantiser does differently, each pinned on its own."""
    from pgolf.quant.official_int8 import dequantize_official_int8, quantize_official_int8

    w = torch.tensor([[0.3, -0.2, 0.01] * 30000, [300.0, -127.0, 1.0] * 30000])
    obj = quantize_official_int8({"w": w, "small": torch.ones(3), "gain": torch.ones(3)}, {"gain": "control"})
    scale = obj["scales"]["w"]
    assert scale.dtype == torch.float16 and scale[0].item() == pytest.approx(1 / 127, rel=1e-3)  # floor 1/127
    assert obj["quantized"]["w"][0, :3].tolist() == [38, -25, 1]  # round(0.3 * 127), ...: small rows, few codes
    # Codes divide by the float32 scale: 127 / (300/127) = 53.76 -> 54 (the fp16-rounded scale gives the same
    # here; the probe file above pins the cases where it does not).
    assert obj["quantized"]["w"][1, :3].tolist() == [127, -54, 0]
    assert obj["passthrough"]["small"].dtype == torch.float16 and obj["passthrough_orig_dtypes"] == {"small": "float32"}
    assert obj["passthrough"]["gain"].dtype == torch.float32
    assert dequantize_official_int8(obj)["small"].dtype == torch.float32
    with pytest.raises(ValueError, match="not an official int8 export"):
        dequantize_official_int8({"__quant_format__": "other"})


def test_official_token_order_spans():
    """Micro-step k = step * A + m of rank r reads S[(k*W + r)*(L+1) : ... + L+1]: one token per
    span is skipped, and resuming at a step reads what an uninterrupted run reads."""
    import numpy as np

    from pgolf.data.loader import LoaderError, TokenLoader
    from pgolf.data.shards import write_shard

    def loader(tmp, rank, world, order="official"):
        return TokenLoader(str(tmp / "s_*.bin"), rank=rank, world_size=world, order=order)

    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_shard(tmp / "s_000.bin", np.arange(0, 103, dtype=np.uint16))
        write_shard(tmp / "s_001.bin", np.arange(103, 133, dtype=np.uint16))
        G, T, A, W = 16, 4, 2, 2  # L = 4 tokens per micro-batch, spans of 5; steps 0..7 cross both ends
        for rank in range(W):
            for step in range(8):
                for m in range(A):
                    x, y = loader(tmp, rank, W).next_batch(step, global_tokens=G, seq_len=T, grad_accum_steps=A,
                                                           micro_step=m)
                    start = ((step * A + m) * W + rank) * 5
                    span = [(start + i) % 133 for i in range(5)]
                    assert x.flatten().tolist() == span[:4] and y.flatten().tolist() == span[1:]
        state = loader(tmp, 0, 1).state_dict()
        with pytest.raises(LoaderError, match="token order 'official'.*data.token_order"):
            loader(tmp, 0, 1, order="per_step").load_state_dict(state)
        with pytest.raises(LoaderError, match="order must be one of"):
            loader(tmp, 0, 1, order="shuffled")


def test_official_dtype_layout():
    """bf16 embedding and inv_freq, fp32 everything else with bf16-rounded initial values, RoPE
    positions computed in bf16 (position 257 becomes 256)."""
    from pgolf.config import ModelConfig
    from pgolf.model.gpt import GPT

    torch.manual_seed(0)
    official = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1,
                               dtype_layout="official")).place("cpu")
    torch.manual_seed(0)
    plain = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)).place("cpu")
    for (name, p), q in zip(official.named_parameters(), plain.parameters()):
        assert p.dtype == (torch.bfloat16 if name == "tok_emb.weight" else torch.float32), name
        assert torch.equal(p.float(), q.bfloat16().float()), name
        assert q.dtype == torch.float32
    rot = official.blocks[1].attn.rotary
    assert rot.inv_freq.dtype == torch.bfloat16 and plain.blocks[1].attn.rotary.inv_freq.dtype == torch.float32
    cos, _ = rot(258, torch.device("cpu"), torch.float32)
    assert torch.equal(cos[0, 0, 257], cos[0, 0, 256])  # 257 rounds to 256 in bf16
    cos32, _ = plain.blocks[1].attn.rotary(258, torch.device("cpu"), torch.float32)
    assert not torch.equal(cos32[0, 0, 257], cos32[0, 0, 256])
    x = torch.randint(0, 64, (1, 8))
    assert official.logits(x).dtype == torch.bfloat16  # on a CPU the forward runs in bf16 from the embedding


def test_muon_defaults_and_official_switches():
    """Ask the code: the CUDA default of Newton-Schulz is bf16 (CPU: the gradient's dtype), the
    baseline preset runs it per matrix in bf16 with the torch matmuls, Adam is fused on the CPU."""
    from pgolf.model.gpt import GPT
    from pgolf.optim.muon import default_ns_dtype
    from pgolf.optim.optimizers import Optimizers

    assert default_ns_dtype(torch.device("cuda", 0), torch.float32) == torch.bfloat16
    assert default_ns_dtype(torch.device("cpu"), torch.float32) == torch.float32
    cfg = load_config("baseline", sets=["model.num_layers=2", "model.model_dim=32", "model.num_heads=2",
                                        "model.num_kv_heads=1", "model.vocab_size=64"])
    opts = Optimizers(GPT(cfg.model).place("cpu"), cfg.optim, cfg.train)
    assert (opts.muon.per_matrix, opts.muon.ns_dtype, opts.muon.impl) == (True, torch.bfloat16, "torch")
    assert all(o.defaults["fused"] for o in opts.all if isinstance(o, torch.optim.Adam))
    demo_opts = Optimizers(GPT(cfg.model).place("cpu"), load_config("demo").optim, cfg.train)
    assert not any(o.defaults["fused"] for o in demo_opts.all if isinstance(o, torch.optim.Adam))
    demo = load_config("demo")
    assert (demo.optim.muon_per_matrix, demo.optim.muon_ns_dtype, demo.model.dtype_layout) == (False, "auto", "fp32")
    assert (demo.train.val_sum, demo.quant.scheme, demo.data.token_order) == ("exact", "pgolf", "per_step")


def test_muon_per_matrix_runs_the_official_loop(monkeypatch):
    """per_matrix: one 2-D Newton-Schulz call per matrix, equal to the official one-matrix loop in
    bf16; banks stack same-shape matrices into one call (which, for the official 1024x512 mlp.fc
    with 2 CPU threads, rounds differently: bmm splits its work unlike mm)."""
    import pgolf.optim.muon as muon_mod
    from test_muon import LRS, MOMS, _problem, _run_official, _run_pgolf

    calls = []
    real = muon_mod.newton_schulz
    monkeypatch.setattr(muon_mod, "newton_schulz", lambda x, **k: calls.append(tuple(x.shape)) or real(x, **k))
    init, grads = _problem([(192, 96)] * 2 + [(96, 96)] * 2, 3)
    ref = _run_official(init, grads, lrs=LRS, moms=MOMS, dtype=torch.bfloat16)
    per = _run_pgolf(init, grads, lrs=LRS, moms=MOMS, impl="torch", ns_dtype=torch.bfloat16, per_matrix=True)
    assert all(torch.equal(a, b) for a, b in zip(per, ref))
    assert calls[:4] == [(192, 96), (192, 96), (96, 96), (96, 96)]
    calls.clear()
    _run_pgolf(init, grads[:1], lrs=LRS, moms=MOMS, impl="torch", ns_dtype=torch.bfloat16)
    assert calls == [(2, 192, 96), (2, 96, 96)]


def test_official_eval_sum_drops_the_tail_and_splits_ranks_like_the_official(sp1024_path):
    """Batch means times counts over whole sequences only (the tail is dropped), rank r scoring
    sequences [n*r//W, n*(r+1)//W); the exact sum scores every target. Printed-number equality
    with the official script is pinned by the golden run above."""
    from pgolf.config import ModelConfig
    from pgolf.data.tokenizer import byte_table, load_tokenizer
    from pgolf.eval.flat import evaluate
    from pgolf.eval.official import evaluate_official
    from pgolf.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=1024, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1)).place("cpu")
    tokens = torch.randint(0, 1024, (7 * 16 + 5 + 1,), generator=torch.Generator().manual_seed(1))
    table = byte_table(load_tokenizer(sp1024_path), 1024)
    kw = dict(seq_len=16, batch_tokens=32, device=torch.device("cpu"))
    whole = evaluate_official(model, tokens, table, **kw)
    exact = evaluate(model, tokens, table, **kw)
    assert (whole.tokens, exact.tokens) == (7 * 16, 7 * 16 + 5)
    assert whole.loss == pytest.approx(exact.nll / exact.tokens, rel=0.05)
    halves = [evaluate_official(model, tokens, table, rank=r, world_size=2, **kw) for r in range(2)]
    assert [h.tokens for h in halves] == [3 * 16, 4 * 16]
    assert sum(h.nll for h in halves) == pytest.approx(whole.nll, rel=1e-6)
    with pytest.raises(ValueError, match="holds no sequence of 16; raise train.val_batch_size"):
        evaluate_official(model, tokens, table, seq_len=16, batch_tokens=8, device=torch.device("cpu"))


def test_validation_batch_per_rank_is_the_official_split():
    """val_batch_size // (world_size * grad_accum) tokens per forward on each rank (at vocab 8192 the
    whole 524,288-token batch on one rank is ~16 GiB of float32 logits)."""
    from pgolf.config import ConfigError
    from pgolf.pipeline import val_batch_per_rank

    cfg = load_config("baseline")
    assert [val_batch_per_rank(cfg, w) for w in (1, 2, 8)] == [65536, 65536, 65536]  # accum 8 // w
    demo = load_config("demo", sets=["train.val_batch_size=16384", "train.micro_batch_tokens=2048"])
    assert val_batch_per_rank(demo, 1) == 16384 // 4 and val_batch_per_rank(demo, 2) == 16384 // 4
    small = load_config("demo", sets=["train.val_batch_size=256"])
    with pytest.raises(ConfigError, match="train.val_batch_size=256 gives 128 tokens per rank"):
        val_batch_per_rank(small, 2)


def test_baseline_refuses_a_validation_split_cut_by_the_small_corpus_rule(tmp_path, sp1024_path):
    """The official data script refuses a corpus smaller than its validation split; pgolf data instead
    keeps 1 in 10 documents. The baseline preset refuses such shards before the run directory is
    touched, naming the manifest and the fix; other presets (the demo's embedded corpus) accept them."""
    from official_corpus import documents
    from pgolf.data.build import build_dataset
    from pgolf.data.manifest import DataError

    small = tmp_path / "small"
    manifest = build_dataset(documents(40), small, tokenizer_path=sp1024_path, vocab_size=1024, num_val_docs=60,
                             progress=False)
    assert manifest["validation"]["docs"] == 4 < manifest["validation"]["requested_docs"] == 60
    env = {**OFFICIAL_ENV, "DATA_PATH": str(small), "TOKENIZER_PATH": str(sp1024_path)}
    run_dir = tmp_path / "run"
    cfg = load_config("baseline", environ=env, sets=[f"train.run_dir={run_dir}"])
    assert load_config("demo").data.small_val_split and not cfg.data.small_val_split
    with pytest.raises(DataError, match=r"manifest.json says its validation split is 4 documents, cut by pgolf "
                                        r"data's small-corpus rule .* --num-val-docs .* data.small_val_split=true"):
        run_training(cfg, echo=False)
    assert not run_dir.exists()

    full = tmp_path / "full"
    build_dataset(documents(120), full, tokenizer_path=sp1024_path, vocab_size=1024, num_val_docs=60, progress=False)
    from pgolf.data.identity import check_dataset, tokenizer_identity

    tok = tokenizer_identity(sp1024_path, 1024)
    assert check_dataset(f"{full}/fineweb_val_*.bin", tok, small_val_split=False).files  # exactly 60 of 120: accepted
    assert check_dataset(f"{small}/fineweb_val_*.bin", tok, small_val_split=True).files
