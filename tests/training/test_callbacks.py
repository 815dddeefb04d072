"""Callbacks see every step, pass and epoch in order, continue across a resume, and change no number."""

import pytest
import torch

from bioprop.data import DataConfig
from bioprop.training import AdamConfig, Callback, TrainConfig, Trainer, without_timings
from bioprop.training.callbacks import CallbackList

from synthetic_data import in_memory


def config(**overrides):
    values = dict(data=DataConfig("mnist", val_size=0), model="mnist-fc", rule="dtp",
                  rule_options={"schedule": "alternating"}, epochs=2, batch_size=20, eval_batch_size=100,
                  limit_batches=3, device="cpu",
                  optimizers={"forward": AdamConfig(lr=1e-3), "inverse": AdamConfig(lr=1e-3)})
    return TrainConfig(**{**values, **overrides})


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append(("start",))

    def on_step_end(self, trainer, step):
        self.events.append(("step", step.epoch, step.pass_index, step.step, step.global_step, step.groups,
                            sorted(step.result.local_losses)))

    def on_pass_end(self, trainer, epoch, pass_index, row):
        self.events.append(("pass", epoch, pass_index, tuple(row["groups"])))

    def on_epoch_end(self, trainer, row):
        self.events.append(("epoch", row["epoch"]))

    def on_train_end(self, trainer, metrics):
        self.events.append(("end", len(metrics)))


def quiet(*args):
    pass


def test_every_hook_is_called_in_order_with_the_step_it_describes():
    recorder = Recorder()
    Trainer(config(), progress="none", data=in_memory(), log=quiet, callbacks=[recorder]).fit()
    kinds = [event[0] for event in recorder.events]
    assert kinds == ["start"] + (["step"] * 3 + ["pass"]) * 2 + ["epoch"] + (["step"] * 3 + ["pass"]) * 2 + \
        ["epoch", "end"]
    steps = [event for event in recorder.events if event[0] == "step"]
    assert [event[4] for event in steps] == list(range(1, 13))  # global steps, across passes and epochs
    assert [(event[1], event[2], event[3]) for event in steps[:6]] == \
        [(1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 2, 1), (1, 2, 2), (1, 2, 3)]
    assert {event[5] for event in steps[:3]} == {("inverse",)} and {event[5] for event in steps[3:6]} == {("forward",)}
    assert all(event[6] for event in steps)  # target propagation's local losses reach the callbacks
    assert ("pass", 2, 2, ("forward",)) in recorder.events and recorder.events[-1] == ("end", 2)


def test_a_resumed_run_continues_the_step_count_and_callbacks_change_no_number(tmp_path):
    plain = Trainer(config(), progress="none", data=in_memory(), log=quiet).fit()
    Trainer(config(epochs=1), out=tmp_path, progress="none", data=in_memory(), log=quiet).fit()
    recorder = Recorder()
    resumed = Trainer(config(), out=tmp_path, resume=True, progress="log", data=in_memory(), log=quiet,
                      callbacks=[recorder]).fit()
    assert [event[4] for event in recorder.events if event[0] == "step"] == list(range(7, 13))
    assert without_timings(resumed) == without_timings(plain)


def test_an_object_without_hooks_is_refused_by_name():
    with pytest.raises(TypeError, match="has none of the hooks"):
        CallbackList([object()])


def test_a_callback_can_stop_training_and_the_run_resumes(tmp_path):
    class StopAfterFirstEpoch(Callback):
        def on_epoch_end(self, trainer, row):
            raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        Trainer(config(), out=tmp_path, progress="none", data=in_memory(), log=quiet,
                callbacks=[StopAfterFirstEpoch()]).fit()
    trainer = Trainer(config(), out=tmp_path, resume=True, progress="none", data=in_memory(), log=quiet)
    assert trainer.start_epoch == 1 and len(trainer.fit()) == 2
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 2
