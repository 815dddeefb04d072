"""Data-parallel training (torch.distributed, gloo on the CPU): two processes with batch B/2 each
end with the parameters of one process with batch B, for every rule and both schedules; a
two-process run resumes exactly; only rank 0 writes."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bioprop.data import DataConfig, load_data
from bioprop.rules import RULES
from bioprop.training import AdamConfig, TrainConfig, Trainer, distributed

TP = [name for name in RULES.names() if "schedule" in {f for f in RULES.get(name).Options.__dataclass_fields__}]
CASES = [(rule, {}) for rule in RULES.names() if rule not in TP]
CASES += [(rule, {"schedule": schedule}) for rule in TP for schedule in ("parallel", "alternating")]


def config(shared_data, rule, options, epochs=1):
    return TrainConfig(data=DataConfig("mnist", data_dir=str(shared_data), val_size=1000), model="mnist-fc",
                       rule=rule, rule_options={**options, **({"diagnostics_every": 0} if rule in TP else {})}, epochs=epochs, batch_size=40,
                       eval_batch_size=400, limit_batches=3, limit_eval_batches=2, device="cpu",
                       train_eval_size=600,
                       optimizers={"forward": AdamConfig(lr=1e-3, eps=1e-6), "inverse": AdamConfig(lr=1e-3)})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world_size, port, shared_data, jobs, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    data = load_data(config(shared_data, "bp", {}).data, seed=0)
    try:
        for key, (rule, options, epochs, out, resume) in jobs.items():
            trainer = Trainer(config(shared_data, rule, options, epochs), out=out, resume=resume, progress=False,
                              data=data, log=lambda *a: None)
            trainer.fit()
            if rank == 0:
                results[key] = ({k: v.clone() for k, v in trainer.rule.state_dict().items() if torch.is_tensor(v)},
                                trainer.metrics)
            del trainer
    finally:
        distributed.leave_process_group(together=True)  # as the CLI leaves


def run_parallel(shared_data, jobs, world_size=2):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(world_size, free_port(), shared_data, jobs, results), nprocs=world_size, join=True)
    return dict(results)


def single(shared_data, rule, options, epochs=1, data=None):
    trainer = Trainer(config(shared_data, rule, options, epochs), progress=False, data=data, log=lambda *a: None)
    initial = {k: v.clone() for k, v in trainer.rule.state_dict().items() if torch.is_tensor(v)}
    trainer.fit()
    return {k: v for k, v in trainer.rule.state_dict().items() if torch.is_tensor(v)}, trainer.metrics, initial


def assert_same(single_run, parallel_run):
    """Same parameters up to float rounding: the two runs differ only in the order of the sums
    in the gradients, which Adam (a normalised step) can amplify where a gradient is near zero;
    so the difference is measured against the size of the update, parameter by parameter."""
    (state, metrics, initial), (parallel_state, parallel_metrics) = single_run, parallel_run
    assert state.keys() == parallel_state.keys()
    for key in state:
        if not state[key].is_floating_point():
            assert torch.equal(parallel_state[key], state[key]), key
            continue
        update = (state[key] - initial[key]).norm()
        difference = (parallel_state[key] - state[key]).norm()
        assert difference <= 1e-3 * update + 1e-7, (key, difference.item(), update.item())
    for row, parallel_row in zip(metrics, parallel_metrics, strict=True):
        for key in ("train_error", "val_error", "test_error"):
            assert parallel_row[key] == pytest.approx(row[key], abs=0.5), key  # an example may flip
        assert parallel_row["train_loss"] == pytest.approx(row["train_loss"], rel=1e-3)


def test_two_processes_at_half_batch_equal_one_process_for_every_rule_and_schedule(shared_data):
    jobs = {f"{rule}-{options.get('schedule', '')}": (rule, options, 1, None, False) for rule, options in CASES}
    results = run_parallel(shared_data, jobs)
    data = load_data(config(shared_data, "bp", {}).data, seed=0)
    for rule, options in CASES:
        assert_same(single(shared_data, rule, options, data=data), results[f"{rule}-{options.get('schedule', '')}"])


def test_a_two_process_run_resumes_exactly_and_only_rank_0_writes(shared_data, tmp_path):
    out = str(tmp_path / "run")
    first = run_parallel(shared_data, {"a": ("dtp", {"schedule": "alternating"}, 1, out, False)})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "checkpoint.pt", "config.json",
                                                                     "metrics.jsonl", "results.json"]
    resumed = run_parallel(shared_data, {"b": ("dtp", {"schedule": "alternating"}, 2, out, True)})
    assert len(first["a"][1]) == 1
    straight = run_parallel(shared_data, {"c": ("dtp", {"schedule": "alternating"}, 2, None, False)})
    state, metrics = resumed["b"]
    for key, value in straight["c"][0].items():
        assert torch.equal(value, state[key]), key
    assert [r["test_error"] for r in metrics] == [r["test_error"] for r in straight["c"][1]]


def torchrun(*argv, processes=2):
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
               f"--master-port={free_port()}", "-m", "bioprop", *argv]
    return subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)


def test_reproduce_and_search_run_under_torchrun(shared_data, tmp_path):
    import json

    out = tmp_path / "runs"
    budget = ["--limit-batches", "3", "--limit-eval-batches", "1", "--data-dir", str(shared_data)]
    result = torchrun("reproduce", "mnist-fc-dtp-alternating", "--seeds", "1", "--epochs", "1", "--out", str(out),
                      "--no-progress", "--device", "cpu", *budget)
    assert result.returncode == 0, result.stderr[-3000:]
    run = out / "mnist-fc-dtp-alternating" / "seed0"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and (out / "report.md").exists()
    assert result.stdout.count("report:") == 1  # rank 0 alone reports

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = torchrun("search", "mnist-fc-bp", "--trials", "2", "--epochs", "1", "--storage", storage,
                      "--out", str(tmp_path / "search"), "--device", "cpu", *budget)
    assert result.returncode == 0, result.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="mnist-fc-bp", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2  # one study, not one per rank
    for trial in study.trials:
        config = json.loads((Path(trial.user_attrs["run_dir"]) / "config.json").read_text())
        assert config["world_size"] == 2
