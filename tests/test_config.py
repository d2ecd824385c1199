"""Presets, overrides (file, official env names, --set) and validation with clear messages."""
import json
import re

import pytest

from pgolf.config import PRESETS, ConfigError, RunConfig, env_overrides, load_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid(name):
    cfg = load_config(name)
    assert cfg.name == name


def test_baseline_is_the_official_hyperparameters():
    c = load_config("baseline")
    assert (c.model.num_layers, c.model.model_dim, c.model.num_heads, c.model.num_kv_heads, c.model.mlp_mult) == (9, 512, 8, 4, 2)
    assert (c.model.vocab_size, c.model.logit_softcap, c.model.rope_base, c.model.qk_gain_init) == (1024, 30.0, 1e4, 1.5)
    assert (c.optim.matrix_lr, c.optim.muon_momentum, c.optim.muon_momentum_warmup_start) == (0.04, 0.95, 0.85)
    assert (c.train.train_batch_tokens, c.train.seq_len, c.train.warmdown_iters, c.train.max_wallclock_seconds) == (524288, 1024, 1200, 600.0)
    assert c.grad_accum_steps(8) == 1 and c.grad_accum_steps(1) == 8


def test_overrides_apply_in_order_file_env_set(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {"num_layers": 5}, "train": {"iterations": 7}}))
    cfg = load_config("baseline", file=f, environ={"ITERATIONS": "11", "NUM_LAYERS": "6", "DATA_PATH": "/d/x/"},
                      sets=["num_layers=4", "train.seed=3", "tie_embeddings=false"])
    assert cfg.model.num_layers == 4 and cfg.train.iterations == 11 and cfg.train.seed == 3
    assert cfg.model.tie_embeddings is False
    assert cfg.data.train_glob == "/d/x/fineweb_train_*.bin" and cfg.data.val_glob == "/d/x/fineweb_val_*.bin"


def test_official_env_names_map_to_existing_keys():
    cfg = RunConfig()
    env = {"ITERATIONS": "3", "TRAIN_BATCH_TOKENS": "2048", "NUM_LAYERS": "2", "MAX_WALLCLOCK_SECONDS": "1.5",
           "MATRIX_LR": "0.01", "TIE_EMBEDDINGS": "0"}
    for key, value in env_overrides(env).items():
        cfg.set(key, value)
    assert (cfg.train.iterations, cfg.train.train_batch_tokens, cfg.model.num_layers) == (3, 2048, 2)
    assert cfg.train.max_wallclock_seconds == 1.5 and cfg.optim.matrix_lr == 0.01 and not cfg.model.tie_embeddings


@pytest.mark.parametrize("sets, message", [
    (["model.num_layers=-1"], "model.num_layers must be positive"),
    (["model.num_heads=7"], "must divide model.model_dim"),
    (["model.num_kv_heads=3"], "must divide model.num_heads"),
    (["train.seq_len=1000"], "must divide train.train_batch_tokens"),
    (["nonsense=1"], "unknown config key 'nonsense'"),
    (["model.nonsense=1"], "unknown config key 'model.nonsense'"),
    (["iterations=ten"], "invalid value 'ten' for iterations"),
    (["iterations=1.5"], "invalid value"),
    (["quant.policy=mlp:5"], "must look like name=bits"),
    (["quant.bits=9"], "quant.bits must be in 2..8"),
    (["optim.beta2=1.0"], "optim.beta2 must be in [0, 1)"),
    (["train.max_wallclock_seconds=-5"], "must be >= 0"),
    (["noequals"], "--set expects key=value"),
    (["optim.ns_schedule=cubic"], "optim.ns_schedule: unknown schedule 'cubic'"),
    (["optim.ns_schedule=[[1, 2]]"], "optim.ns_schedule: a custom schedule must be"),
    (["train.kernels=cuda"], "train.kernels must be one of auto, triton, torch"),
    (["eval.bos_id=1024"], "eval.bos_id=1024 must be a token id below model.vocab_size=1024"),
    (["eval.bos_id=-1"], "eval.bos_id=-1 must be a token id below model.vocab_size=1024"),
    (["model.tied_embed_init_std=-1"], "model.tied_embed_init_std must be >= 0, got -1.0"),
    (["model.tied_embed_init_std=nan"], "model.tied_embed_init_std must be a finite number"),
    (["train.seed=-1"], "train.seed must be in 0..4294967295"),
    (["train.seed=4294967296"], "train.seed must be in 0..4294967295"),
    (["train.run_dir="], "train.run_dir must name a folder, got an empty value"),
])
def test_invalid_values_are_rejected_with_the_key_named(sets, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("baseline", sets=sets)


@pytest.mark.parametrize("tokenizer_vocab", [8192, 512])
def test_vocab_that_does_not_match_the_tokenizer_is_rejected(tokenizer_vocab):
    cfg = load_config("baseline")
    with pytest.raises(ConfigError, match="model.vocab_size=1024 does not match the tokenizer"):
        cfg.validate(tokenizer_vocab=tokenizer_vocab)
    cfg.validate(tokenizer_vocab=1024)


def test_a_bad_official_env_value_names_the_variable():
    with pytest.raises(ConfigError, match=re.escape("invalid value 'abc' for train.iterations (expected int), from "
                                                    "the environment variable ITERATIONS")):
        load_config("baseline", environ={"ITERATIONS": "abc"})


def test_an_empty_run_dir_flag_is_refused(capsys):
    from pgolf.cli import main as cli_main

    assert cli_main(["config", "--run-dir", ""]) == 2
    assert "train.run_dir must name a folder, got an empty value" in capsys.readouterr().err


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("baseline", file=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config("baseline", file=bad)


def test_round_trip_through_dict():
    cfg = load_config("demo", sets=["model.num_layers=3"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("world, micro, expect", [(1, 65536, 8), (2, 65536, 4), (8, 65536, 1), (3, 65536, None)])
def test_grad_accum_keeps_global_batch(world, micro, expect):
    cfg = load_config("baseline", sets=[f"train.micro_batch_tokens={micro}"])
    if expect is None:
        with pytest.raises(ConfigError):
            cfg.grad_accum_steps(world)
    else:
        accum = cfg.grad_accum_steps(world)
        assert accum == expect
        assert world * accum * (cfg.train.train_batch_tokens // (world * accum)) == cfg.train.train_batch_tokens
