"""Real processes killed with SIGKILL at random moments (mid-pass, mid-checkpoint-write,
mid-evaluation) resume to exactly the parameters and metrics of an uninterrupted run; a search
worker killed mid-trial loses no trial; a killed `reproduce` picks up where it stopped."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from bioprop.training import without_timings


def train_command(shared_data, out, *extra):
    return [sys.executable, "-m", "bioprop", "train", "--data", "mnist", "--data-dir", str(shared_data),
            "--val-size", "1000", "--model", "mnist-fc", "--rule", "dtp", "--schedule", "alternating",
            "--diagnostics-every", "2", "--epochs", "3", "--batch-size", "50", "--limit-batches", "6",
            "--limit-eval-batches", "2", "--train-eval-size", "500", "--checkpoint-every", "2", "--device", "cpu",
            "--no-progress", "--out", str(out), *extra]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_killed(command, delays):
    """Start ``command``; SIGKILL it after each delay (restarting it with --resume); then let it finish."""
    kills = 0
    for delay in delays:
        process = subprocess.Popen(command + (["--resume"] if kills else []), env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            continue
        assert process.returncode == 0, process.stderr.read().decode()
        return kills
    finished = subprocess.run(command + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    return kills


def read_run(folder):
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=False)
    return metrics, checkpoint


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_run(shared_data, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(train_command(shared_data, straight), env=ENV, check=True, capture_output=True, timeout=300)
    expected_metrics, expected = read_run(straight)
    started = time.perf_counter()
    subprocess.run(train_command(shared_data, tmp_path / "timing"), env=ENV, check=True, capture_output=True)
    duration = time.perf_counter() - started
    rng = random.Random(0)
    total_kills = 0
    for attempt in range(5):  # until several kills landed (a kill after the run ended lands nowhere), at least 2 runs
        if attempt >= 2 and total_kills >= 3:
            break
        killed = tmp_path / f"killed{attempt}"
        # each run is killed twice at random moments (start-up included; the resumed process has less left to do)
        delays = [rng.uniform(0.3, 0.9) * duration, rng.uniform(0.2, 0.5) * duration]
        total_kills += run_killed(train_command(shared_data, killed), delays)
        metrics, checkpoint = read_run(killed)
        assert without_timings(metrics) == without_timings(expected_metrics)
        for key, value in expected["rule"].items():
            if torch.is_tensor(value):
                assert torch.equal(value, checkpoint["rule"][key]), key
        assert checkpoint["rule"]["_extra_state"] == expected["rule"]["_extra_state"]  # the diagnostics counter
        for group, state in expected["optimizers"].items():
            for index, moments in state["state"].items():
                for name, tensor in moments.items():
                    assert torch.equal(tensor, checkpoint["optimizers"][group]["state"][index][name]), (group, name)
        assert torch.equal(expected["rng"]["torch"], checkpoint["rng"]["torch"])
        assert not list(killed.glob(".*.tmp"))  # no temporaries of an interrupted write remain
    assert total_kills >= 3  # the test really killed runs, several times


def test_a_damaged_checkpoint_is_named_and_an_out_that_is_a_file_is_refused(shared_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for content in (b"", b"garbage" * 10):
        (run / "checkpoint.pt").write_bytes(content)
        result = subprocess.run(train_command(shared_data, run, "--resume"), env=ENV, capture_output=True, text=True)
        assert result.returncode == 2 and "checkpoint" in result.stderr and str(run) in result.stderr
        assert "Traceback" not in result.stderr
    (tmp_path / "file").write_text("x")
    result = subprocess.run(train_command(shared_data, tmp_path / "file"), env=ENV, capture_output=True, text=True)
    assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr


def test_a_search_worker_killed_mid_trial_loses_no_trial(shared_data, tmp_path):
    optuna = pytest.importorskip("optuna")
    db = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "bioprop", "search", "mnist-fc-bp", "--trials", "3", "--epochs", "2",
               "--storage", db, "--study-name", "killed", "--data-dir", str(shared_data), "--limit-batches", "40",
               "--limit-eval-batches", "1", "--heartbeat", "1", "--out", str(tmp_path / "search")]
    worker = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once its first trial has a checkpoint (mid-trial)
        if list((tmp_path / "search" / "trials").glob("*/checkpoint.pt")):
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(3.5)  # longer than the grace period of 3 heartbeats
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="killed", storage=db)
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.FAIL in states  # the killed trial, recorded as failed ...
    assert len(complete) == 3  # ... and retried: the study has all its trials
    retried = [t for t in complete if "retry_of" in t.user_attrs]
    assert retried and all(t.params == study.trials[t.user_attrs["retry_of"]].params for t in retried)


def test_a_killed_reproduce_picks_up_where_it_stopped(shared_data, tmp_path):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "bioprop", "reproduce", "mnist-fc-bp", "mnist-fc-dfa", "--seeds", "2",
               "--epochs", "2", "--limit-batches", "30", "--limit-eval-batches", "1", "--data-dir", str(shared_data),
               "--out", str(out), "--no-report", "--no-progress", "--threads", "1"]
    worker = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/seed*/metrics.jsonl"))) < 2:
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "already done" in result.stdout
    for folder in out.glob("*/seed*"):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == [1, 2], folder  # every run complete, no epoch twice
    assert len(list(out.glob("*/seed*"))) == 4
