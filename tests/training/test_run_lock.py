"""A run folder is trained by one process at a time: a second one (two shells, two `reproduce` on
one runs folder) is refused by name instead of overwriting the first one's checkpoint and metrics;
the lock dies with its process, so a killed run leaves none behind."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bioprop.data import DataConfig
from bioprop.errors import BiopropError
from bioprop.training import AdamConfig, TrainConfig, Trainer
from bioprop.training.run_folder import LOCK, RunFolder

from synthetic_data import in_memory

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock")


def config(**overrides):
    values = dict(data=DataConfig("mnist", val_size=0), model="mnist-fc", rule="bp", epochs=1, batch_size=20,
                  eval_batch_size=100, limit_batches=2, device="cpu", optimizers={"forward": AdamConfig(lr=1e-3)})
    return TrainConfig(**{**values, **overrides})


def trainer(out, **overrides):
    return Trainer(config(**overrides), out=out, resume=True, progress="none", data=in_memory(), log=lambda *a: None)


def test_a_second_trainer_on_a_folder_in_use_is_refused_until_the_first_one_ends(tmp_path):
    first = trainer(tmp_path / "run")
    with pytest.raises(BiopropError, match=rf"run is being trained by another process \(pid {os.getpid()} on .+\): "
                                           r"wait for it to finish, or choose another --out"):
        trainer(tmp_path / "run")
    first.fit()
    second = trainer(tmp_path / "run", epochs=2)  # the first one has ended: the folder is free to resume
    assert second.start_epoch == 1
    second.fit()
    assert len(second.metrics) == 2


def test_a_run_that_writes_nothing_or_another_folder_takes_no_lock(tmp_path):
    first = trainer(tmp_path / "a")
    trainer(tmp_path / "b").fit()
    Trainer(config(), progress="none", data=in_memory(), log=lambda *a: None).fit()
    first.fit()
    assert (tmp_path / "a" / LOCK).exists() and (tmp_path / "b" / LOCK).exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from bioprop.training.run_folder import RunFolder
    folder = RunFolder(sys.argv[1])
    folder.claim()
    print("held", flush=True)
    time.sleep(120)
""")


def test_the_lock_of_a_killed_process_is_gone_with_it(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BiopropError, match=rf"is being trained by another process \(pid {holder.pid} on "):
            RunFolder(folder).claim()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    trainer(folder).fit()  # no stale lock: the kernel released it with the process


def test_reproduce_reports_a_run_held_elsewhere_and_trains_the_others(tmp_path, shared_data):
    from bioprop.experiments.reproduce import plan_runs, reproduce
    from bioprop.presets import get_preset

    specs = plan_runs([get_preset("mnist-fc-bp")], seeds=2, epochs=None, data_dir=str(shared_data))
    for spec in specs:
        spec.config.epochs, spec.config.limit_batches, spec.config.limit_eval_batches = 1, 1, 1
    held = RunFolder(specs[0].path(tmp_path))
    held.claim()
    lines = []
    try:
        result = reproduce(specs, tmp_path, log=lines.append, echo_epochs=False)
    finally:
        held.release()
    assert [s.tag for s in result["failed"]] == [specs[0].tag]
    assert [s.tag for s in result["ran"]] == [specs[1].tag]
    assert any(line.startswith(f"FAILED {specs[0].tag}: BiopropError: ") and "another process" in line for line in lines)


def test_a_refused_trainer_leaves_the_folder_free(tmp_path):
    """A Trainer that refuses to start (a finished run without --resume, a changed config) holds no lock,
    though its traceback keeps it alive."""
    trainer(tmp_path / "run").fit()
    with pytest.raises(BiopropError, match="--resume") as refused:
        Trainer(config(), out=tmp_path / "run", progress="none", data=in_memory(), log=lambda *a: None)
    with pytest.raises(BiopropError, match="differs from the saved run in batch_size"):
        trainer(tmp_path / "run", batch_size=10)
    assert refused.value is not None
    trainer(tmp_path / "run", epochs=2).fit()
