"""The trainer applies each group's optimiser and learning-rate schedule, per step of that group
(alternating target propagation steps each group in its own pass), and a run interrupted mid-pass
resumes the schedule exactly."""

import math

import pytest
import torch

from bioprop.data import DataConfig
from bioprop.training import OptimizerConfig, TrainConfig, Trainer, without_timings

from synthetic_data import in_memory


def config(**overrides):
    values = dict(data=DataConfig("mnist", val_size=0), model="mnist-fc", rule="dtp",
                  rule_options={"schedule": "alternating"}, epochs=2, batch_size=20, eval_batch_size=100,
                  limit_batches=5, device="cpu",
                  optimizers={"forward": OptimizerConfig(lr=1e-3, lr_schedule="cosine"),
                              "inverse": OptimizerConfig(lr=1e-2, optimizer="sgd", momentum=0.9, warmup_epochs=1)})
    return TrainConfig(**{**values, **overrides})


def quiet(*args):
    pass


def test_each_group_gets_its_optimiser_and_schedule_over_its_own_steps():
    trainer = Trainer(config(), progress="none", data=in_memory(), log=quiet)
    assert isinstance(trainer.optimizers["inverse"], torch.optim.SGD)
    assert isinstance(trainer.optimizers["forward"], torch.optim.Adam)
    lrs = []
    trainer.callbacks.callbacks.append(type("Rates", (), {"on_step_end": lambda self, t, step: lrs.append(
        (step.groups, t.optimizers[step.groups[0]].param_groups[0]["lr"]))})())
    trainer.fit()
    inverse = [lr for groups, lr in lrs if groups == ("inverse",)]
    forward = [lr for groups, lr in lrs if groups == ("forward",)]
    # the inverse group warms up over its 5 steps of epoch 1 (rate after step s: lr (s+2)/5), then stays
    assert inverse[:4] == pytest.approx([1e-2 * (s + 2) / 5 for s in range(4)]) and inverse[4:] == [1e-2] * 6
    # the forward group's cosine spans its 10 steps: after step s the factor is (1 + cos(pi (s+1) / 10)) / 2
    assert forward == pytest.approx([1e-3 * (1 + math.cos(math.pi * (s + 1) / 10)) / 2 for s in range(10)], abs=1e-12)


def test_a_run_stopped_mid_pass_resumes_the_schedule_exactly(tmp_path):
    straight = Trainer(config(), progress="none", data=in_memory(), log=quiet)
    expected = straight.fit()
    stopped = Trainer(config(checkpoint_every="3"), out=tmp_path, progress="none", data=in_memory(), log=quiet)
    stopped.callbacks.callbacks.append(type("Stop", (), {"on_step_end": lambda self, t, step: (
        _ for _ in ()).throw(RuntimeError("killed")) if step.global_step == 14 else None})())
    with pytest.raises(RuntimeError, match="killed"):
        stopped.fit()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert set(saved["schedulers"]) == {"forward", "inverse"} and saved["position"]["state"]["step"] == 3
    resumed = Trainer(config(checkpoint_every="3"), out=tmp_path, resume=True, progress="none", data=in_memory(),
                      log=quiet)
    assert without_timings(resumed.fit()) == without_timings(expected)
    for key, value in straight.rule.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, resumed.rule.state_dict()[key]), key
