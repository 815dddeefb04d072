"""Ctrl-C on `reproduce --jobs 2`: the runs in progress end (with their checkpoints), the runs not
started are cancelled rather than started, and the same command then finishes the table."""

import os
import signal

import pytest

from bioprop.experiments.reproduce import plan_runs, reproduce, run_state
from bioprop.presets import get_preset

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals")


def tiny_specs(shared_data, seeds):
    specs = plan_runs([get_preset("mnist-fc-bp")], seeds=seeds, epochs=None, data_dir=str(shared_data))
    for spec in specs:
        spec.config.epochs, spec.config.limit_batches, spec.config.limit_eval_batches = 1, 2, 1
        spec.config.train_eval_size = 100
    return specs


@pytest.fixture
def python_ctrl_c():
    """Python's Ctrl-C handler for the test, also when the tests run in the background (`make test &`),
    which the shell starts with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_a_pool_cancels_the_pending_runs_and_the_same_call_resumes(shared_data, tmp_path, python_ctrl_c,
                                                                               signum):
    specs = tiny_specs(shared_data, seeds=8)
    lines = []

    def log(line):  # Ctrl-C or `kill` (to this process only) as soon as the first run is done
        lines.append(line)
        if line.startswith("done"):
            os.kill(os.getpid(), signum)

    before = signal.getsignal(signal.SIGTERM)
    try:
        reproduce(specs, tmp_path, jobs=2, threads=1, log=log)
    except KeyboardInterrupt as stopped:
        if signum == signal.SIGTERM:  # named, so that the CLI says so and exits with 143
            assert stopped.args == ("SIGTERM",)
    else:
        pytest.fail("reproduce was not interrupted:\n" + "\n".join(lines))
    assert signal.getsignal(signal.SIGTERM) is before
    states = [run_state(spec.path(tmp_path), 1)[0] for spec in specs]
    # the workers were told to stop (SIGUSR1 from the parent, which alone got the Ctrl-C): the runs they
    # were training stopped after a step with a checkpoint, and those already queued to them were refused
    assert states.count("done") >= 1 and states.count("new") >= 8 - 1 - 2 - 1, states
    assert not any(spec.path(tmp_path).exists() for spec, state in zip(specs, states) if state == "new"), \
        "a cancelled run left a folder"
    again = reproduce(specs, tmp_path, jobs=2, threads=1, log=lines.append)
    assert len(again["skipped"]) == states.count("done") and not again["failed"]
    assert all(run_state(spec.path(tmp_path), 1)[0] == "done" for spec in specs)
