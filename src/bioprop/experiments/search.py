"""``bioprop search``: the paper's random hyperparameter search (Table 4), with Optuna.

Search space (:data:`SPACE`, Bartunov et al. 2018, Table 4; ``--space widened``, :data:`SPACES`,
widens it to hold every MNIST value of Table 5):

=======================  ===========================================================
forward Adam lr          [1e-5, 3e-4], **log-uniform** (the paper does not say; the range
                         spans 1.5 decades, where uniform sampling would put 90 % of the
                         draws above 3e-5)
forward Adam beta1       fixed 0.9
forward Adam beta2       {0.99, 0.999}
forward Adam eps         {1e-4, 1e-6, 1e-8}
other groups' Adam      the same four for every other parameter group of the rule (the
                         inverses of target propagation), except groups whose settings
                         follow another group's (``group_defaults``, e.g. Kolen-Pollack)
rule options             those whose ``Options`` field carries ``search`` metadata:
                         alpha (DTP) [0.01, 0.2] uniform, sigma (TP rules) [0.01, 0.3] uniform
=======================  ===========================================================

The groups and the options come from the rule class, so a new rule is searched without any
change here. BP, FA and DFA search the forward Adam settings only. Everything else comes from
the preset.

* Objective: the best validation error over the trial's epochs (minimised). Each trial also
  records its test error at that epoch and its best test error over training (user attributes),
  which the report's Figure 5 histograms use.
* Sampling: :class:`TrialSeededRandomSampler`, Optuna's ``RandomSampler`` made deterministic per
  trial *number*: trial k draws the same configuration whatever worker runs it and however many
  workers share the study, so a 60-trial study is the same 60 configurations for a seed.
* Storage: SQLite in ``OUT/search.db`` by default; ``--storage`` takes any SQLAlchemy URL
  (``postgresql://...``), and every worker started with the same storage and study name joins the
  same study (``load_if_exists``) until ``--trials`` trials exist in total.
* Pruning (``--prune``): after every epoch a trial reports its validation error, and Optuna's
  ``MedianPruner`` stops it (state PRUNED, its run kept) when it is worse than the median of the
  earlier trials at that epoch (after 5 trials). Not under torchrun.
* Culling (the paper's ImageNet protocol; default ``--cull-after 10`` for ImageNet presets): every
  trial trains for ``cull_after`` epochs only (phase 1); once all trials are complete, the best
  trial's run, and only that one, is resumed from its checkpoint to the full ``--epochs`` (phase 2),
  by whichever worker finishes last (a lock file keeps it to one). The result is stored in the
  study's user attribute ``continued``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from bioprop.errors import BiopropError
from bioprop.presets import Preset
from bioprop.rules import RULES
from bioprop.rules.base import searchable_options
from bioprop.training import AdamConfig, TrainConfig

@dataclass(frozen=True)
class SearchSpace:
    lr: tuple[float, float] = (1e-5, 3e-4)  # log-uniform
    beta1: tuple[float, ...] = (0.9,)  # one value: fixed (not a trial parameter)
    beta2: tuple[float, ...] = (0.99, 0.999)
    eps: tuple[float, ...] = (1e-4, 1e-6, 1e-8)
    option_scale: float = 1.0  # the rule options' upper bounds (alpha, sigma) times this


SPACE = SearchSpace()
#: ``--space``: Table 4 as printed, or widened to hold every MNIST value of Table 5 (which lie outside
#: Table 4: lr up to 9.6e-3 (an inverse), beta1 0.99, beta2 0.95, eps 1e-3, alpha 0.232, sigma 0.361), so
#: the paper's MNIST search was evidently wider than its Table 4 says.
SPACES = {"table4": SPACE,
          "widened": SearchSpace(lr=(1e-5, 1e-2), beta1=(0.9, 0.99), beta2=(0.95, 0.99, 0.999),
                                 eps=(1e-3, 1e-4, 1e-6, 1e-8), option_scale=2.0)}


def searched_groups(config: TrainConfig) -> list[str]:
    """The rule's parameter groups whose Adam settings are drawn (not those that follow another group)."""
    rule = RULES.get(config.rule)
    return [group for group in rule.groups if group not in rule.group_defaults]


def suggest(trial, base: TrainConfig, space: SearchSpace = SPACE) -> TrainConfig:
    """``base`` with one configuration of the Table 4 space drawn through ``trial``."""
    config = TrainConfig.from_dict(base.to_dict())
    for group in searched_groups(config):
        config.optimizers[group] = AdamConfig(
            lr=trial.suggest_float(f"{group}_lr", *space.lr, log=True),
            beta1=(trial.suggest_categorical(f"{group}_beta1", list(space.beta1)) if len(space.beta1) > 1
                   else space.beta1[0]),
            beta2=trial.suggest_categorical(f"{group}_beta2", list(space.beta2)),
            eps=trial.suggest_categorical(f"{group}_eps", list(space.eps)),
            eps_convention=base.optimizer_settings(group).eps_convention)
    for option, (distribution, low, high) in searchable_options(config.rule).items():
        config.rule_options[option] = trial.suggest_float(option, low, high * space.option_scale,
                                                          log=distribution == "log-uniform")
    return config


def _trial_sampler_class():
    import optuna

    class TrialSeededRandomSampler(optuna.samplers.RandomSampler):
        """``RandomSampler`` whose draws depend only on (seed, trial number, parameter name)."""

        def __init__(self, seed: int = 0):
            super().__init__(seed=seed)
            self.base_seed = int(seed)

        def sample_independent(self, study, trial, param_name, param_distribution):
            key = f"{self.base_seed}/{trial.number}/{param_name}".encode()
            seed = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")
            saved = self._rng
            self._rng = SimpleNamespace(rng=np.random.RandomState(seed))
            try:
                return super().sample_independent(study, trial, param_name, param_distribution)
            finally:
                self._rng = saved

    return TrialSeededRandomSampler


MAX_RETRIES = 2


def retry_failed_trial(study, trial) -> None:
    """Optuna's failed-trial callback (a stale trial of a dead worker): queue it again with the
    same parameters, at most ``MAX_RETRIES`` times; the retry resumes the dead trial's run."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= MAX_RETRIES:
        return
    first = int(trial.user_attrs.get("retry_of", trial.number))
    study.enqueue_trial(trial.params, user_attrs={"retry_of": first, "retries": retries + 1})


def storage_for(url: str | None, out: Path, heartbeat: int = 60):
    """An Optuna RDB storage: SQLite in ``out/search.db`` by default; waits on locks (many workers)."""
    import optuna

    if url is None:
        out.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(out / 'search.db').resolve()}"
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    # the stale-trial callback argument was renamed in Optuna 4.9
    stale_callback = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback"
                      in inspect.signature(optuna.storages.RDBStorage.__init__).parameters else "failed_trial_callback")
    last_error = None
    for attempt in range(5):  # workers starting together race to create the schema: retry
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # a worker's trials beat every `heartbeat` seconds; a RUNNING trial silent for longer
                # than the grace period belongs to a dead worker: it is marked failed and re-queued
                # with the same parameters (and resumes from the dead trial's checkpoint)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                    **{stale_callback: retry_failed_trial})
        except Exception as error:  # noqa: BLE001 - surface a bad URL as a user error
            last_error = error
            if "://" not in url or url.split("://")[0].split("+")[0] not in ("sqlite", "postgresql", "mysql"):
                break
            time.sleep(0.5 + attempt)
    raise BiopropError(f"--storage {url!r} could not be opened: {last_error}")


def study_accuracies(study) -> tuple[list[float], list[str]]:
    """(best test accuracy per complete trial, a Markdown summary row) for the Figure 5 histogram."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    values = [100.0 - float(t.user_attrs.get("best_test_error", t.value)) for t in complete]
    rows = []
    if complete:
        best = min(complete, key=lambda t: t.value)
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        test = best.user_attrs.get("test_error_at_best_val")
        rows.append(f"| `{study.study_name}` | {len(complete)} | {best.value:.2f} | "
                    f"{'–' if test is None else f'{test:.2f}'} | {params} |")
    return values, rows


class Search:
    """One worker of a (possibly shared) study for one preset."""

    def __init__(self, preset: Preset, trials: int = 60, storage: str | None = None, study_name: str | None = None,
                 epochs: int | None = None, cull_after: int | None = None, out: str | Path | None = None,
                 seed: int = 0, overrides: dict | None = None, progress: bool = False,
                 log: Callable[[str], None] = print, heartbeat: int = 60, space: str = "table4",
                 prune: bool = False):
        if not isinstance(trials, int) or trials < 1:
            raise BiopropError(f"--trials {trials!r}: expected a positive number of trials")
        if epochs is not None and epochs < 1:
            raise BiopropError(f"--epochs {epochs}: expected a positive number")
        if cull_after is None and preset.dataset == "imagenet":
            cull_after = 10  # the paper's ImageNet protocol
        if cull_after is not None and cull_after < 0:
            raise BiopropError(f"--cull-after {cull_after}: expected >= 0 (0 = no culling)")
        if space not in SPACES:
            raise BiopropError(f"--space {space!r}: expected one of {', '.join(SPACES)}")
        self.space, self.space_name, self.prune = SPACES[space], space, prune
        self.preset = preset
        data_fields = ("data_dir", "verify")
        self.base = preset.config(**{k: v for k, v in (overrides or {}).items() if k not in data_fields and v is not None})
        if (overrides or {}).get("data_dir"):
            self.base.data.data_dir = str(overrides["data_dir"])
        if (overrides or {}).get("verify") is not None:
            self.base.data.verify = bool(overrides["verify"])
        if epochs is not None:
            self.base.epochs = epochs
        self.cull_after = cull_after if cull_after and cull_after < self.base.epochs else None
        self.trials = trials
        self.study_name = study_name or preset.name
        self.out = Path(out) if out is not None else Path("runs") / "search" / self.study_name
        self.storage_url = storage
        self.seed = seed
        self.progress = progress
        self.log = log
        self.heartbeat = heartbeat
        self.parallel = None  # set by run(): this process's place in a torchrun job
        self._data = None

    # -- optuna plumbing --------------------------------------------------------------------
    def study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = _trial_sampler_class()(seed=self.seed)
        # pruning (the paper's protocol culls poor configurations early): a trial whose validation
        # error after an epoch is worse than the median of the earlier trials at that epoch stops
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if self.prune else optuna.pruners.NopPruner()
        study = optuna.create_study(study_name=self.study_name,
                                    storage=storage_for(self.storage_url, self.out, self.heartbeat),
                                    sampler=sampler, pruner=pruner, direction="minimize", load_if_exists=True)
        study.set_user_attr("preset", self.preset.name)
        study.set_user_attr("space", self.space_name)
        return study

    def _counted(self, study) -> int:
        """Trials done or under way: RUNNING ones of dead workers are first failed (and re-queued)."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING,
                  optuna.trial.TrialState.PRUNED)
        return len(study.get_trials(deepcopy=False, states=states))

    @staticmethod
    def _waiting(study) -> int:
        """Re-queued retries of failed trials, still to be run."""
        import optuna

        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))

    def trial_dir(self, number: int) -> Path:
        return self.out / "trials" / f"{self.study_name}-{number:04d}"

    def _data_for(self, config: TrainConfig):
        if self._data is None:
            from bioprop.data import load_data

            self._data = load_data(config.data, seed=config.seed)
        return self._data

    def _train(self, config: TrainConfig, path: Path, log=lambda line: None, on_epoch=None) -> list[dict]:
        """Trains (or resumes) one run; under torchrun every process trains it, told by rank 0."""
        self.parallel.broadcast((config.to_dict(), str(path)))
        return self._fit(config, path, log, on_epoch)

    def _fit(self, config: TrainConfig, path: Path, log=lambda line: None, on_epoch=None) -> list[dict]:
        from bioprop.training import Trainer

        progress = self.progress and self.parallel.is_main
        return Trainer(config, out=path, resume=True, progress=progress, data=self._data_for(config), log=log,
                       on_epoch=on_epoch).fit()

    def _pruning(self, trial):
        """The per-epoch report to Optuna's pruner (None without ``prune``, and under torchrun, where the
        other processes could not stop with rank 0): raises ``TrialPruned`` when the pruner says so."""
        import optuna

        if not self.prune or self.parallel.world_size > 1:
            return None

        def report(row: dict) -> None:
            value = row.get("val_error", row.get("test_error"))
            trial.report(float(value), step=int(row["epoch"]))
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", int(row["epoch"]))
                raise optuna.TrialPruned(f"validation error {value:.2f}% at epoch {row['epoch']}: worse than "
                                         "the median of the earlier trials")
        return report

    def _follow(self) -> dict:
        """The loop of a torchrun process other than rank 0: train what rank 0 sends, until None."""
        from bioprop.training import DivergenceError

        while (order := self.parallel.broadcast(None)) is not None:
            try:
                self._fit(TrainConfig.from_dict(order[0]), Path(order[1]))
            except DivergenceError:
                pass  # rank 0 records it
        return {"study": self.study_name, "follower": True}

    def objective(self, trial) -> float:
        import optuna

        from bioprop.training import DivergenceError, summarize

        config = suggest(trial, self.base, self.space)
        phase1 = self.cull_after or config.epochs
        config.epochs = phase1
        # a retry of a trial whose worker died continues that trial's run from its checkpoint
        path = self.trial_dir(int(trial.user_attrs.get("retry_of", trial.number)))
        trial.set_user_attr("run_dir", str(path.resolve()))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("epochs", phase1)
        started = time.time()
        try:
            metrics = self._train(config, path, on_epoch=self._pruning(trial))
        except DivergenceError as error:  # a diverged configuration is a result: pruned, and the search goes on
            trial.set_user_attr("diverged", str(error))
            self.log(f"trial {trial.number} diverged: {error}")
            raise optuna.TrialPruned(str(error)) from None
        summary = summarize(metrics)
        value = summary.get("best_val_error", summary["best_test_error"])
        for key in ("best_test_error", "test_error_at_best_val", "best_val_epoch", "final_train_error"):
            if key in summary:
                trial.set_user_attr(key, summary[key])
        self.log(f"trial {trial.number}: best val error {value:.2f}% (test {summary.get('test_error_at_best_val', float('nan')):.2f}%) "
                 f"in {time.time() - started:.0f}s; {trial.params}")
        return value

    # -- the worker loop ----------------------------------------------------------------------
    def run(self, continue_only: bool = False) -> dict:
        from bioprop.training import distributed

        self.parallel = distributed.join(self.base.device)
        if not self.parallel.is_main:
            return self._follow()
        try:
            return self._lead(continue_only)
        finally:
            self.parallel.broadcast(None)  # the other processes stop

    def _lead(self, continue_only: bool) -> dict:
        import optuna

        study = self.study()
        failures = 0
        finished: list = []
        while not continue_only and (self._counted(study) < self.trials or self._waiting(study)):
            # optimize() (rather than ask/tell) keeps the storage heartbeat, so a trial of a killed
            # worker is marked failed instead of blocking the study forever
            study.optimize(self.objective, n_trials=1, catch=(RuntimeError, FloatingPointError),
                           callbacks=[lambda _study, frozen: finished.append(frozen)])
            if finished and finished[-1].state == optuna.trial.TrialState.FAIL:
                failures += 1
                self.log(f"trial {finished[-1].number} failed: {finished[-1].system_attrs.get('fail_reason', '')}")
                if failures >= 3:
                    raise BiopropError(f"{failures} trials in a row failed; see the log above")
            else:
                failures = 0
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        result = {"study": self.study_name, "complete": len(complete), "continued": None}
        if complete:
            best = min(complete, key=lambda t: t.value)
            result.update(best_trial=best.number, best_value=best.value, best_params=best.params)
        if self.cull_after and len(complete) >= self.trials:
            result["continued"] = self.continue_best(study)
        return result

    def continue_best(self, study) -> dict | None:
        """Phase 2 of culling: resume the best trial's run to the full budget (once per study)."""
        import optuna

        from bioprop.training import summarize

        done = study.user_attrs.get("continued")
        if done and done.get("epochs", 0) >= self.base.epochs:
            return done
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if running:
            self.log(f"{len(running)} trial(s) still running elsewhere; the last worker continues the best one")
            return None
        best = min(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
        path = Path(best.user_attrs.get("run_dir", self.trial_dir(best.number)))
        if not (path / "checkpoint.pt").exists():
            self.log(f"best trial {best.number}'s run is not on this machine ({path}, host "
                     f"{best.user_attrs.get('host')}); run `bioprop search ... --continue-best` there")
            return None
        lock = path / "continue.lock"
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            self.log(f"another worker is continuing trial {best.number} (lock {lock})")
            return None
        try:
            config = suggest(optuna.trial.FixedTrial(best.params, number=best.number), self.base)
            self.log(f"culling: continuing only trial {best.number} (best val error {best.value:.2f}% after "
                     f"{best.user_attrs.get('epochs')} epochs) to {config.epochs} epochs")
            summary = summarize(self._train(config, path, log=self.log))
            record = {"trial": best.number, "epochs": summary["epochs"], "run_dir": str(path), **{
                k: summary[k] for k in ("best_val_error", "test_error_at_best_val", "best_test_error") if k in summary}}
            study.set_user_attr("continued", record)
            return record
        finally:
            lock.unlink(missing_ok=True)
