"""``bioprop search --space widened --prune``: a space that holds every MNIST value of Table 5 (which
Table 4 does not), beta1 drawn there, and Optuna's median pruner stopping a poor trial after an epoch."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")  # absent only on the GPU machine

from bioprop.errors import BiopropError  # noqa: E402
from bioprop.experiments.search import SPACES, Search, _trial_sampler_class, suggest  # noqa: E402
from bioprop.presets import get_preset  # noqa: E402
from bioprop.presets.paper import TABLE5  # noqa: E402
from bioprop.rules.base import searchable_options  # noqa: E402


def holds(space, adam) -> bool:
    return (space.lr[0] <= adam.lr <= space.lr[1] and adam.beta1 in space.beta1 and adam.beta2 in space.beta2
            and adam.eps in space.eps)


def test_widened_space_holds_every_mnist_value_of_table5_and_table4_does_not():
    bounds = {name: high for name, (_, _, high) in searchable_options("dtp").items()}  # alpha, noise
    outside_table4 = 0
    for arch in ("mnist-fc", "mnist-lc"):
        for column, hyper in TABLE5[arch].items():
            for adam in (hyper.forward, hyper.inverse):
                if adam is not None:
                    assert holds(SPACES["widened"], adam), (arch, column, adam)
                    outside_table4 += not holds(SPACES["table4"], adam)
            for name, value in (("alpha", hyper.alpha), ("noise", hyper.noise)):
                if value is not None:
                    assert value <= bounds[name] * SPACES["widened"].option_scale, (arch, column, name)
    assert outside_table4 > 5  # the reason for the widened space


def test_widened_space_draws_beta1_and_table4_keeps_it_fixed():
    base = get_preset("mnist-fc-sdtp-alternating").config()
    widened, table4 = (optuna.create_study(sampler=_trial_sampler_class()(seed=0)) for _ in range(2))
    drawn, fixed = set(), set()
    for _ in range(30):
        trial = widened.ask()
        config = suggest(trial, base, SPACES["widened"])
        drawn |= {adam.beta1 for adam in config.optimizers.values()}
        assert config.rule_options["inverse_reduction"] == "element-mean"  # the preset's conventions stay
        assert "forward_beta1" in trial.params
        widened.tell(trial, 0.0)
        trial = table4.ask()
        fixed |= {adam.beta1 for adam in suggest(trial, base).optimizers.values()}
        assert "forward_beta1" not in trial.params  # Table 4: not a trial parameter (old studies stay valid)
        table4.tell(trial, 0.0)
    assert drawn == {0.9, 0.99} and fixed == {0.9}
    with pytest.raises(BiopropError, match="--space 'wide'"):
        Search(get_preset("mnist-fc-bp"), space="wide")


def test_prune_stops_a_trial_worse_than_the_median_after_an_epoch(tmp_path, monkeypatch):
    """Trials 0-4 reach 5 % validation error at every epoch; trial 5 reports 60 % after epoch 1 and is
    pruned there (its later epochs never run); without --prune it completes."""
    for prune in (True, False):
        epochs_run = []

        def train(self, config, path, log=None, on_epoch=None):
            number = int(path.name.rsplit("-", 1)[1])
            rows = []
            for epoch in range(1, 4):
                row = dict(epoch=epoch, train_error=1.0, val_error=60.0 if number == 5 else 5.0, test_error=5.0)
                rows.append(row)
                epochs_run.append((number, epoch))
                if on_epoch is not None:
                    on_epoch(row)
            return rows

        monkeypatch.setattr(Search, "_train", train)
        out = tmp_path / str(prune)
        search = Search(get_preset("mnist-fc-bp"), trials=6, out=out, log=lambda line: None, prune=prune)
        result = search.run()
        study = optuna.load_study(study_name="mnist-fc-bp", storage=f"sqlite:///{out / 'search.db'}")
        last = study.trials[5]
        if prune:
            assert last.state == optuna.trial.TrialState.PRUNED and last.user_attrs["pruned_at_epoch"] == 1
            assert (5, 2) not in epochs_run and result["complete"] == 5
        else:
            assert last.state == optuna.trial.TrialState.COMPLETE and (5, 3) in epochs_run
