"""The training loop on real MNIST with few batches: run folder, exact resume, repeatability,
bad input refused before training."""

import json

import pytest
import torch

from bioprop.data import DataConfig
from bioprop.errors import BiopropError
from bioprop.training import AdamConfig, TrainConfig, Trainer, summarize, train, without_timings


def config(shared_data, **overrides):
    values = dict(data=DataConfig("mnist", data_dir=str(shared_data), val_size=1000), model="mnist-fc",
                  rule="fa", epochs=2, batch_size=50, eval_batch_size=500, limit_batches=6, limit_eval_batches=2,
                  device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def quiet(*args):
    pass


def test_run_folder_holds_config_metrics_results_and_checkpoint(shared_data, tmp_path):
    result = train(config(shared_data), out=tmp_path, progress=False, log=quiet)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert {"epoch", "train_error", "val_error", "test_error", "seconds"} <= set(row)
        assert 0 <= row["test_error"] <= 100
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rule"] == "fa" and saved["optimizers"]["forward"]["lr"] == 1e-3
    assert len(saved["normalization"]["mean"]) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_error_at_best_val"] == result["summary"]["test_error_at_best_val"]
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 2 and "model.blocks.0.layer.feedback_weight" in checkpoint["rule"]  # B on its layer
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_training_reduces_the_error(shared_data):
    first = train(config(shared_data, rule="bp", epochs=1, limit_batches=1), progress=False, log=quiet)
    later = train(config(shared_data, rule="bp", epochs=1, limit_batches=60), progress=False, log=quiet)
    assert later["metrics"][-1]["test_error"] < first["metrics"][-1]["test_error"] - 20


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_same_seed_same_numbers(shared_data, rule):
    runs = [train(config(shared_data, rule=rule, epochs=1), progress=False, log=quiet) for _ in range(2)]
    strip = without_timings
    assert strip(runs[0]["metrics"]) == strip(runs[1]["metrics"])
    other = train(config(shared_data, rule=rule, epochs=1, seed=1), progress=False, log=quiet)
    assert strip(other["metrics"]) != strip(runs[0]["metrics"])


def test_resume_continues_exactly(shared_data, tmp_path):
    straight = train(config(shared_data, epochs=3), out=tmp_path / "straight", progress=False, log=quiet)
    train(config(shared_data, epochs=1), out=tmp_path / "resumed", progress=False, log=quiet)
    resumed = train(config(shared_data, epochs=3), out=tmp_path / "resumed", resume=True, progress=False, log=quiet)
    strip = without_timings
    assert strip(resumed["metrics"]) == strip(straight["metrics"])
    for key, value in straight["rule"].state_dict().items():
        assert torch.equal(value, resumed["rule"].state_dict()[key]), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_existing_run_is_not_overwritten_and_resume_checks_config(shared_data, tmp_path):
    train(config(shared_data, epochs=1), out=tmp_path, progress=False, log=quiet)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(BiopropError, match="--resume"):
        Trainer(config(shared_data), out=tmp_path, progress=False)
    with pytest.raises(BiopropError, match="differs from the saved run in batch_size"):
        Trainer(config(shared_data, batch_size=20), out=tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    notes = []  # --resume on a folder without a checkpoint starts afresh: re-running a command is safe
    Trainer(config(shared_data), out=tmp_path / "empty", resume=True, progress=False, log=notes.append)
    assert notes and "starting the run from the beginning" in notes[0]


@pytest.mark.parametrize("overrides, message", [
    (dict(model="cifar-fc"), "expects inputs \\(3, 32, 32\\) and 10 classes, but dataset 'mnist' has \\(1, 28, 28\\)"),
    (dict(model="mnist-xl"), "unknown model 'mnist-xl'"),
    (dict(rule="xfa"), "unknown learning rule 'xfa'"),
    (dict(optimizers={"forward": AdamConfig(lr=-1e-3), "inverse": AdamConfig()}), "learning rate must be > 0"),
    (dict(optimizers={"forward": AdamConfig(beta2=1.5), "inverse": AdamConfig()}), "beta2 must be in"),
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(batch_size=-5), "batch_size must be a positive integer"),
    (dict(device="tpu"), "device must be"),
])
def test_bad_input_is_refused_with_a_clear_message(shared_data, overrides, message):
    with pytest.raises(BiopropError, match=message):
        Trainer(config(shared_data, **overrides), progress=False)


def test_summary_under_both_selection_protocols():
    rows = [dict(epoch=1, train_error=5, val_error=3.0, test_error=2.5),
            dict(epoch=2, train_error=2, val_error=2.0, test_error=2.2),
            dict(epoch=3, train_error=1, val_error=2.5, test_error=2.0)]
    summary = summarize(rows)
    assert summary["test_error_at_best_val"] == 2.2 and summary["best_val_epoch"] == 2
    assert summary["best_test_error"] == 2.0 and summary["best_test_epoch"] == 3
    assert summary["final_test_error"] == 2.0


def test_on_epoch_sees_each_row_after_its_checkpoint_and_can_stop_the_run(shared_data, tmp_path):
    """``Trainer(on_epoch=...)`` (a search's pruner): called with every epoch's row once the epoch is
    saved; an exception it raises stops training there, and the run resumes exactly."""
    seen = []

    class Stop(Exception):
        pass

    def stop_after_two(row):
        seen.append((row, json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])))
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        Trainer(config(shared_data, epochs=3), out=tmp_path / "run", progress=False, log=quiet,
                on_epoch=stop_after_two).fit()
    assert [row["epoch"] for row, _ in seen] == [1, 2]
    for row, saved in seen:  # the row is already on disk when the callback sees it
        assert without_timings(saved) == without_timings(row)
    resumed = train(config(shared_data, epochs=3), out=tmp_path / "run", resume=True, progress=False, log=quiet)
    straight = train(config(shared_data, epochs=3), out=tmp_path / "straight", progress=False, log=quiet)
    assert without_timings(resumed["metrics"]) == without_timings(straight["metrics"])
