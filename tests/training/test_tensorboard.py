"""--tensorboard writes every epoch metric, the step losses, learning rates, diagnostics and the
alignment angles; a resumed run continues the same curves without repeating steps."""

import builtins

import pytest

from bioprop.data import DataConfig
from bioprop.errors import BiopropError
from bioprop.training import AdamConfig, TrainConfig, Trainer

from synthetic_data import in_memory

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from bioprop.training.tensorboard import TensorBoard  # noqa: E402


def config(epochs=2):
    return TrainConfig(data=DataConfig("mnist", val_size=0), model="mnist-fc", rule="fa", epochs=epochs,
                       batch_size=20, eval_batch_size=100, limit_batches=4, device="cpu", alignment_every=2,
                       optimizers={"forward": AdamConfig(lr=1e-3)})


def read(folder):
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_epoch_metric_step_loss_lr_and_alignment_angle_is_written(tmp_path):
    metrics = Trainer(config(), progress="none", data=in_memory(), log=lambda *a: None,
                      callbacks=[TensorBoard(tmp_path / "tb", every_steps=2)]).fit()
    scalars = read(tmp_path / "tb")
    assert scalars["epoch/test_error"] == [(1, pytest.approx(metrics[0]["test_error"])),
                                           (2, pytest.approx(metrics[1]["test_error"]))]
    assert [step for step, _ in scalars["step/loss"]] == [2, 4, 6, 8]
    assert scalars["step/lr/forward"][0][1] == pytest.approx(1e-3)
    assert [step for step, _ in scalars["step/update_angle/layer1"]] == [1, 3, 5, 7]  # measured on steps 0, 2 of a pass
    assert "epoch/update_angle/layer1" in scalars and "epoch/feedback_angle/layer5" in scalars


def test_a_resumed_run_continues_the_curves_without_repeating_steps(tmp_path):
    Trainer(config(epochs=1), out=tmp_path / "run", progress="none", data=in_memory(), log=lambda *a: None,
            callbacks=[TensorBoard(tmp_path / "tb", every_steps=1)]).fit()
    Trainer(config(), out=tmp_path / "run", resume=True, progress="none", data=in_memory(), log=lambda *a: None,
            callbacks=[TensorBoard(tmp_path / "tb", every_steps=1)]).fit()
    scalars = read(tmp_path / "tb")
    assert [step for step, _ in scalars["step/loss"]] == list(range(1, 9))
    assert [step for step, _ in scalars["epoch/train_error"]] == [1, 2]


def test_without_the_tensorboard_package_the_error_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(BiopropError, match=r"pip install 'bioprop\[tensorboard\]'"):
        TensorBoard("unused")
