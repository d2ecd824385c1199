"""The compile warm-up of a model with depth recurrence compiles both topologies, so the loop
switch in the middle of training compiles nothing inside the timed region."""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from pgolf.config import ModelConfig, load_config
from pgolf.model.gpt import GPT
from pgolf.optim.optimizers import Optimizers
from pgolf.train.loop import LoopHooks, Trainer
from pgolf.train.runlog import RunLog
from pgolf.util.device import DistEnv

VOCAB, SEQ, ITERATIONS, SWITCH_AT = 64, 16, 4, 2
LOOPED = dict(vocab_size=VOCAB, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, num_loops=1,
              loop_start=1, loop_end=1)


class RandomTokens:
    """The loader's interface: a fixed batch of random tokens per step (no shards needed)."""

    def next_batch(self, step, *, global_tokens, seq_len, grad_accum_steps, micro_step):
        gen = torch.Generator().manual_seed(step)
        ids = torch.randint(0, VOCAB, (global_tokens // seq_len, seq_len + 1), generator=gen)
        return ids[:, :-1], ids[:, 1:]

    def state_dict(self):
        return {}


def trainer(tmp_path, model_cfg: ModelConfig, backend: CompileCounter | None, topologies: list) -> Trainer:
    """A one-process trainer on ``model_cfg`` compiled with ``backend`` (None: eager); the loop switches on at step
    SWITCH_AT (as the pipeline's hook does at ``loop_enable_frac``) and each step's topology is
    appended to ``topologies``."""
    cfg = load_config("demo", sets=["train.kernels=torch", f"train.iterations={ITERATIONS}", "train.warmup_steps=1",
                                    f"train.seq_len={SEQ}", f"train.train_batch_tokens={2 * SEQ}",
                                    f"train.micro_batch_tokens={2 * SEQ}", "train.max_wallclock_seconds=0",
                                    "train.val_loss_every=0", "train.checkpoint_every=0", "train.train_log_every=0"])
    torch.manual_seed(0)
    model = GPT(model_cfg)
    forward = model if backend is None else torch.compile(model, backend=backend, dynamic=False)

    def before_step(step: int, elapsed_s: float) -> None:
        if model_cfg.num_loops:
            model.set_looping(step >= SWITCH_AT)
            topologies.append(bool(model.looping))

    return Trainer(model, forward, Optimizers(model, cfg.optim, cfg.train), RandomTokens(), cfg.train, env=DistEnv(),
                   device=torch.device("cpu"), grad_accum=1, log=RunLog(tmp_path, echo=False),
                   hooks=LoopHooks(before_step=before_step))


@pytest.mark.slow
def test_loop_switch_after_the_warm_up_compiles_nothing(tmp_path):
    """Warm-up, then training through the switch (unlooped steps 0-1, looped steps 2-3): every graph
    was compiled during the warm-up. A warm-up of the unlooped topology alone leaves the looped one
    to compile at the switch (shown on the same trainer by skipping the looped phase)."""
    backend, topologies = CompileCounter(), []
    run = trainer(tmp_path / "both", ModelConfig(**LOOPED), backend, topologies)
    assert bool(run.model.looping)  # constructed looped, for evaluation
    run.warm_up_compile()
    warmed = backend.frame_count
    assert bool(run.model.looping)  # the switch is restored with the weights
    log = (tmp_path / "both" / "train.log").read_text()
    assert "warmup_step:1/2 looping:0" in log and "warmup_step:2/2 looping:1" in log
    run.run()
    assert topologies[-ITERATIONS:] == [False, False, True, True]
    assert backend.frame_count == warmed > 0

    backend, topologies = CompileCounter(), []
    run = trainer(tmp_path / "one", ModelConfig(**LOOPED), backend, topologies)
    run.model.set_looping = lambda on: GPT.set_looping(run.model, False)  # the warm-up cannot switch the loop on
    run.warm_up_compile()
    del run.model.set_looping
    warmed = backend.frame_count
    run.run()
    assert topologies[-ITERATIONS:] == [False, False, True, True]
    assert backend.frame_count > warmed


def test_warm_up_is_rolled_back_for_both_topologies(tmp_path):
    """After a two-topology warm-up the weights and the loop switch are as before it, and a model
    without recurrence warms up once per step only."""
    run = trainer(tmp_path / "looped", ModelConfig(**LOOPED), None, [])
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.model.set_looping(False)
    run.warm_up_compile()
    assert not bool(run.model.looping)
    assert all(torch.equal(v, before[k]) for k, v in run.model.state_dict().items())
    plain = trainer(tmp_path / "plain", ModelConfig(**{**LOOPED, "num_loops": 0}), None, [])
    plain.warm_up_compile()
    log = (tmp_path / "plain" / "train.log").read_text()
    assert "warmup_step:1/1\n" in log and "looping" not in log
