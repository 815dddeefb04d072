"""The report's Budget section: the seeds counted in words, and every setting that cut training or
evaluation short, with its flag."""

from __future__ import annotations

from test_report import fake_run

from bioprop.experiments.report import write_report
from bioprop.experiments.report_budget import budget_section, run_budget, seeds_line
from bioprop.experiments.runs import Run


def run(seed: int, epochs_done: int = 2, **config) -> Run:
    metrics = [{"epoch": e, "train_error": 1.0, "val_error": 1.0, "test_error": 1.0} for e in range(1, epochs_done + 1)]
    return Run("mnist-fc-bp", "mnist-fc-bp", seed, {"model": "mnist-fc", "epochs": 2, "batch_size": 100,
                                                    "eval_batch_size": 1000, **config}, metrics)


def test_one_seed_reads_as_one_seed_not_zero_seeds():
    assert seeds_line([0]) == "1 seed (seed 0)"
    assert seeds_line([0, 1, 2]) == "3 seeds (0, 1, 2)"
    line = budget_section([run(0)])[0]
    assert line.startswith("- 1 seed (seed 0); ") and "seeds: 0" not in line


def test_every_budget_setting_is_stated_with_its_flag():
    text = run_budget({"epochs": 3, "batch_size": 100, "eval_batch_size": 1000, "limit_batches": 100,
                       "limit_eval_batches": 2, "train_eval_size": 10000}, epochs_done=1)
    assert text == ("3 epochs, 100 batches of 100 per epoch (`--limit-batches 100`), evaluation on at most 2 "
                    "batches of 1000 per split (`--limit-eval-batches 2`), train error on a fixed random 10,000 "
                    "training examples (`--train-eval-size 10000`) (only 1 done so far)")
    assert run_budget({"epochs": 3}, epochs_done=3) == "3 epochs"


def test_the_report_states_the_eval_limit_per_model(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [5.0, 2.0], [5.0, 1.0])
    config = root / "mnist-fc-bp" / "seed0" / "config.json"
    config.write_text(config.read_text().replace('"limit_eval_batches": null', '"limit_eval_batches": 2'))
    budget = write_report(root).read_text().split("## Budget")[1].split("\n## ")[0]
    assert "- 1 seed (seed 0); " in budget
    assert "- `mnist-fc`: 2 epochs, evaluation on at most 2 batches of 1000 per split (`--limit-eval-batches 2`)" \
        in budget
