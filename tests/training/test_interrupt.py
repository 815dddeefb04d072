"""Stopping keeps the work: SIGINT and SIGTERM finish the step, write a checkpoint, say how to
resume and exit non-zero; the resumed run ends exactly where an uninterrupted one does; in a
data-parallel job every rank stops at the same step, also when only one was signalled."""

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from bioprop.data import DataConfig
from bioprop.training import AdamConfig, Callback, TrainConfig, Trainer, TrainingInterrupted, distributed, without_timings
from bioprop.training.interrupt import AGREE_EVERY, StopRequests

from synthetic_data import in_memory


def config(**overrides):
    values = dict(data=DataConfig("mnist", val_size=0), model="mnist-fc", rule="dtp",
                  rule_options={"schedule": "alternating"}, epochs=2, batch_size=20, eval_batch_size=100,
                  limit_batches=4, device="cpu", optimizers={"forward": AdamConfig(lr=1e-3),
                                                             "inverse": AdamConfig(lr=1e-3)})
    return TrainConfig(**{**values, **overrides})


class SignalAt(Callback):
    """Sends ``signum`` to this process after global step ``step`` (on ``rank`` only)."""

    def __init__(self, step, signum=signal.SIGINT, rank=None):
        self.step, self.signum, self.rank = step, signum, rank

    def on_step_end(self, trainer, step):
        if step.global_step == self.step and self.rank in (None, trainer.parallel.rank):
            os.kill(os.getpid(), self.signum)


def quiet(*args):
    pass


def test_the_first_signal_is_a_request_the_second_stops_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_sigusr1_is_a_request_that_never_escalates():
    """SIGUSR1 (reproduce forwarding a stop to its workers, SLURM's --signal=USR1@T) asks to stop; with or
    after a Ctrl-C it does not turn the request into stopping at once, and a Ctrl-C after it is still
    the first real signal."""
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.signal_name == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C as well: still a request
        assert stop.signal_name == "SIGINT"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGUSR1) is before


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_pass_checkpoints_that_step_and_the_resumed_run_is_the_uninterrupted_one(tmp_path, signum,
                                                                                               code):
    straight = Trainer(config(), progress="none", data=in_memory(), log=quiet)
    expected = straight.fit()
    with pytest.raises(TrainingInterrupted) as stopped:
        Trainer(config(), out=tmp_path, progress="none", data=in_memory(), log=quiet,
                callbacks=[SignalAt(6, signum)]).fit()  # epoch 1, pass 2 (forward), step 2
    assert stopped.value.exit_code == code
    assert str(stopped.value) == (f"stopped by {signal.Signals(signum).name} in epoch 1, pass 2 at step 2 of 4; "
                                  f"checkpoint written to {tmp_path / 'checkpoint.pt'}; continue with "
                                  f"`bioprop train --out {tmp_path} --resume`")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 0 and saved["position"]["pass"] == 1 and saved["position"]["state"]["step"] == 2
    resumed = Trainer(config(), out=tmp_path, resume=True, progress="none", data=in_memory(), log=quiet)
    assert without_timings(resumed.fit()) == without_timings(expected)
    for key, value in straight.rule.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, resumed.rule.state_dict()[key]), key


def test_without_a_run_folder_the_message_says_nothing_was_saved():
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM in epoch 1, pass 1 at step 1 of 4; "
                                                  r"nothing saved \(no run folder: --out\)"):
        Trainer(config(), progress="none", data=in_memory(), log=quiet,
                callbacks=[SignalAt(1, signal.SIGTERM)]).fit()


def test_the_command_line_exits_143_on_sigterm_with_the_resume_command_and_resumes(shared_data, tmp_path):
    command = [sys.executable, "-m", "bioprop", "train", "--data", "mnist", "--data-dir", str(shared_data),
               "--val-size", "1000", "--model", "mnist-fc", "--rule", "fa", "--epochs", "1", "--batch-size", "20",
               "--limit-batches", "400", "--limit-eval-batches", "1", "--train-eval-size", "100", "--device", "cpu",
               "--progress", "log", "--progress-every", "0.05", "--out", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in process.stdout:  # a progress line: training has started
        if ": step " in line:
            process.send_signal(signal.SIGTERM)
            break
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 143, errors
    assert "bioprop: stopped by SIGTERM in epoch 1 at step" in errors
    assert f"continue with `bioprop train --out {tmp_path} --resume`" in errors
    step = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["position"]["state"]["step"]
    assert 0 < step < 400
    resumed = subprocess.run([sys.executable, "-m", "bioprop", "train", "--out", str(tmp_path), "--resume",
                              "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path} at epoch 1 of 1 (pass 1, step {step})" in resumed.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signalled_worker(rank, world_size, port, out, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(config(limit_batches=3 * AGREE_EVERY, epochs=1), out=out, progress="none",
                      data=in_memory(n_train=3 * AGREE_EVERY * 20), log=quiet,
                      callbacks=[SignalAt(5, signal.SIGTERM, rank=1)])  # rank 1 only
    try:
        trainer.fit()
        results[rank] = "finished"
    except TrainingInterrupted as stopped:
        results[rank] = (trainer.pass_state.step, str(stopped))
    finally:
        del trainer
        distributed.leave_process_group(together=True)  # as the CLI leaves


def test_in_a_data_parallel_job_every_rank_stops_at_the_same_step(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(signalled_worker, args=(2, free_port(), str(tmp_path), results), nprocs=2, join=True)
    assert results[0][0] == results[1][0] == AGREE_EVERY  # the first agreement after the signal
    assert results[0][1].startswith("stopped by a signal to another process in epoch 1, pass 1 at step 20 of 60")
    assert results[1][1].startswith("stopped by SIGTERM in epoch 1, pass 1 at step 20 of 60")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["position"]["state"]["step"] == AGREE_EVERY


def test_an_interrupted_reproduce_says_that_the_same_command_resumes_it(shared_data, tmp_path):
    command = [sys.executable, "-m", "bioprop", "reproduce", "mnist-fc-bp", "--seeds", "1", "--epochs", "3",
               "--limit-batches", "60", "--limit-eval-batches", "1", "--train-eval-size", "100", "--device", "cpu",
               "--data-dir", str(shared_data), "--jobs", "1", "--out", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in process.stdout:
        if "epoch   1/3" in line:  # the first epoch is done: interrupt the second
            process.send_signal(signal.SIGINT)
            break
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 130, errors
    assert f"checkpoint written to {tmp_path / 'mnist-fc-bp' / 'seed0' / 'checkpoint.pt'}" in errors
    assert "continue with `bioprop reproduce mnist-fc-bp --seeds 1 --epochs 3" in errors
