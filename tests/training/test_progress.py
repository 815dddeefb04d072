"""Progress fits where it goes: a bar on a terminal, a line every N seconds or steps in a log,
nothing but the epoch lines when asked; the Python API writes no bars into a log file."""

import inspect
import io
from types import SimpleNamespace

import pytest
import torch

import bioprop
from bioprop.data import DataConfig
from bioprop.errors import BiopropError
from bioprop.rules import StepResult
from bioprop.training import TrainConfig, Trainer
from bioprop.training.callbacks import StepEvent
from bioprop.training.progress import ProgressBar, ProgressLog, progress_callback

from synthetic_data import in_memory


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_auto_is_a_bar_on_a_terminal_and_lines_in_a_log():
    assert isinstance(progress_callback("auto", stream=Terminal()), ProgressBar)
    assert isinstance(progress_callback(True, stream=io.StringIO()), ProgressLog)
    assert progress_callback("none") is None and progress_callback(False) is None
    with pytest.raises(BiopropError, match="progress must be one of"):
        progress_callback("verbose")


def event(step, steps=10, loss=1.0, seconds=0.0):
    result = StepResult(loss=torch.tensor(loss), logits=torch.zeros(1, 10))
    return StepEvent(epoch=2, epochs=5, pass_index=1, passes=2, step=step, steps=steps, global_step=step,
                     groups=("inverse",), batch_size=100, result=result, seconds=seconds)


def test_log_lines_every_n_seconds_with_rate_mean_loss_and_eta():
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).__next__
    lines = []
    trainer = SimpleNamespace(parallel=SimpleNamespace(is_main=True), log=lines.append)
    progress = ProgressLog(every_seconds=2.5, clock=clock)
    for step, loss in zip(range(1, 7), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]):
        progress.on_step_end(trainer, event(step, loss=loss))
    # the pass started at 0 s (step 1 took no time); at 3 s (step 4) 2.5 s have passed: one line, 4 steps in 3 s,
    # the loss averaged over steps 1-4, 6 steps left at 4/3 steps/s
    assert lines == ["epoch 2/5 pass 1/2 (inverse): step 4/10 (40%)  1.3 steps/s  loss 2.5000  pass ETA 0:04"]


def test_log_lines_every_n_steps_and_only_on_process_zero():
    lines = []
    main = SimpleNamespace(parallel=SimpleNamespace(is_main=True), log=lines.append)
    other = SimpleNamespace(parallel=SimpleNamespace(is_main=False), log=lines.append)
    progress = ProgressLog(every_steps=3)
    for step in range(1, 11):
        progress.on_step_end(main, event(step))
        progress.on_step_end(other, event(step))
    assert [line.split(": step ")[1].split(" ")[0] for line in lines] == ["3/10", "6/10", "9/10"]


def test_the_python_api_writes_lines_not_bars_into_a_log(capsys):
    config = TrainConfig(data=DataConfig("mnist", val_size=0), model="mnist-fc", rule="fa", epochs=1,
                         batch_size=10, eval_batch_size=100, device="cpu")
    lines = []
    # progress="auto" with standard error captured (not a terminal): lines, no bar
    Trainer(config, progress="auto", data=in_memory(n_train=200), log=lines.append, progress_every=1e-9).fit()
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "it/s" not in captured.err
    step_lines = [line for line in lines if ": step " in line]
    assert len(step_lines) == 19 and lines[-1].startswith("epoch   1/1")  # steps 1..19 of 20, then the epoch
    assert inspect.signature(bioprop.train).parameters["progress"].default == "auto"  # the public function's too
