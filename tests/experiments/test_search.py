"""``bioprop search``: the Table 4 space, seeded sampling, a study shared by two worker processes,
culling (only the best trial continues) and the Figure 5 histograms."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")  # a hard requirement; absent only on the GPU machine (bench/gpu_check.sh)

from bioprop.cli import main  # noqa: E402
from bioprop.errors import BiopropError  # noqa: E402
from bioprop.experiments.report import write_report  # noqa: E402
from bioprop.experiments.search import SPACE, Search, _trial_sampler_class, suggest  # noqa: E402
from bioprop.presets import get_preset  # noqa: E402

TINY = {"limit_batches": 2, "limit_eval_batches": 1}


def draw(preset: str, n: int, seed: int = 0):
    study = optuna.create_study(sampler=_trial_sampler_class()(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(suggest(trial, get_preset(preset).config()))
        study.tell(trial, 0.0)
    return study, configs


def test_search_space_is_table_4():
    _, configs = draw("mnist-fc-dtp-parallel", 30)
    for config in configs:
        for group in ("forward", "inverse"):
            adam = config.optimizers[group]
            assert SPACE.lr[0] <= adam.lr <= SPACE.lr[1] and adam.beta1 == 0.9
            assert adam.beta2 in (0.99, 0.999) and adam.eps in (1e-4, 1e-6, 1e-8)
        assert 0.01 <= config.rule_options["alpha"] <= 0.2 and 0.01 <= config.rule_options["noise"] <= 0.3
        assert config.rule_options["schedule"] == "parallel"  # not searched: from the preset
    lrs = sorted(c.optimizers["forward"].lr for c in configs)
    assert lrs[len(lrs) // 2] < 1e-4  # log-uniform: the median is near 5.5e-5, not 1.5e-4

    study, configs = draw("mnist-lc-fa", 3)
    assert set(study.trials[0].params) == {"forward_lr", "forward_beta2", "forward_eps"}
    assert "inverse" not in configs[0].optimizers
    study, _ = draw("mnist-fc-sdtp-alternating", 1)
    assert "alpha" not in study.trials[0].params and "noise" in study.trials[0].params


def test_sampling_depends_only_on_seed_and_trial_number():
    first = [t.params for t in draw("mnist-fc-dtp-parallel", 4, seed=3)[0].trials]
    again = [t.params for t in draw("mnist-fc-dtp-parallel", 4, seed=3)[0].trials]
    other = [t.params for t in draw("mnist-fc-dtp-parallel", 4, seed=4)[0].trials]
    assert first == again and first != other and first[0] != first[1]


def test_two_worker_processes_share_one_sqlite_study(mnist_dir, tmp_path):
    db = tmp_path / "shared.db"
    command = [sys.executable, "-m", "bioprop.cli", "search", "mnist-fc-bp", "--trials", "2", "--epochs", "1",
               "--storage", f"sqlite:///{db}", "--study-name", "shared", "--data-dir", str(mnist_dir),
               "--limit-batches", "2", "--limit-eval-batches", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen(command + ["--out", str(tmp_path / f"worker{k}")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 2 <= len(complete) <= 3  # both workers may start a trial at the same instant
    assert len({t.number for t in complete}) == len(complete)
    assert all(0 <= t.value <= 100 and "best_test_error" in t.user_attrs for t in complete)
    assert study.user_attrs["preset"] == "mnist-fc-bp"
    # each trial's run folder is where the worker that ran it wrote it
    assert all(Path(t.user_attrs["run_dir"], "metrics.jsonl").exists() for t in complete)


def test_culling_continues_only_the_best_trial(mnist_dir, tmp_path):
    search = Search(get_preset("mnist-fc-bp"), trials=3, epochs=2, cull_after=1, out=tmp_path,
                    overrides={"data_dir": str(mnist_dir), **TINY}, log=lambda line: None)
    result = search.run()
    study = optuna.load_study(study_name="mnist-fc-bp", storage=f"sqlite:///{tmp_path / 'search.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 3
    best = min(trials, key=lambda t: t.value)
    epochs = {t.number: len((Path(t.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines())
              for t in trials}
    assert epochs[best.number] == 2 and sorted(epochs.values()) == [1, 1, 2]
    continued = study.user_attrs["continued"]
    assert continued["trial"] == best.number and continued["epochs"] == 2 and result["continued"] == continued
    # a second worker finds the study full and the continuation done: nothing more is trained
    again = Search(get_preset("mnist-fc-bp"), trials=3, epochs=2, cull_after=1, out=tmp_path,
                   overrides={"data_dir": str(mnist_dir), **TINY}, log=lambda line: None).run()
    assert again["complete"] == 3 and again["continued"] == continued

    # Figure 5 from the study
    text = write_report(tmp_path, tmp_path / "report").read_text()
    assert "![search histograms](search-histograms.png)" in text and "| `mnist-fc-bp` | 3 |" in text
    assert (tmp_path / "report" / "search-histograms.png").exists()


def test_imagenet_presets_cull_after_10_by_default(tmp_path):
    search = Search(get_preset("imagenet-lc-dtp-parallel"), trials=60, out=tmp_path)
    assert search.cull_after == 10 and search.base.epochs == 500
    assert Search(get_preset("mnist-fc-bp"), out=tmp_path).cull_after is None
    assert Search(get_preset("imagenet-lc-bp"), cull_after=0, out=tmp_path).cull_after is None


def test_search_bad_input(tmp_path, capsys):
    with pytest.raises(BiopropError, match="--trials -1"):
        Search(get_preset("mnist-fc-bp"), trials=-1, out=tmp_path)
    assert main(["search", "mnist-fc-bp", "--trials", "-1", "--out", str(tmp_path)]) == 2
    assert "--trials -1: expected a positive number" in capsys.readouterr().err
    assert main(["search", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["search", "mnist-fc-bp", "--storage", "nosuchdb://x", "--out", str(tmp_path)]) == 2
    assert "--storage" in capsys.readouterr().err


def test_a_diverged_trial_is_pruned_and_the_search_goes_on(tmp_path, monkeypatch):
    from bioprop.experiments.search import Search
    from bioprop.training import DivergenceError

    calls = []

    def train(self, config, path, log=None, on_epoch=None):
        calls.append(path)
        if len(calls) == 1:
            raise DivergenceError("rule 'bp': the training loss became non-finite in epoch 1, pass 1, step 3")
        return [dict(epoch=1, train_error=5.0, val_error=4.0, test_error=4.5)]

    monkeypatch.setattr(Search, "_train", train)
    search = Search(get_preset("mnist-fc-bp"), trials=3, out=tmp_path, log=lambda line: None)
    result = search.run()
    study = optuna.load_study(study_name="mnist-fc-bp", storage=f"sqlite:///{tmp_path / 'search.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 1 and result["complete"] == 2
    assert "non-finite" in study.trials[0].user_attrs["diverged"]
