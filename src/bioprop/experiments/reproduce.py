"""Run table cells x seeds into one folder, resuming whatever is already there.

Layout of an output folder ``DIR``::

    DIR/reproduce.json                 commands that produced it (for the report)
    DIR/<run>/spec.json                preset name and variant (e.g. {"aux_units": 128})
    DIR/<run>/seed<k>/                 one training run: config.json, metrics.jsonl,
                                       results.json, checkpoint.pt, train.log

``<run>`` is the preset name, ``<preset>.aux-<n>`` for the AO-SDTP auxiliary-size sweep,
``<preset>.KEY=VALUE...`` for a ``--vary`` study, and ends in ``.protocol=paper`` for a run under
the paper's protocol (``--protocol paper``: all the training data, no validation hold-out).
A run whose metrics already cover the epoch budget is skipped; a run with a checkpoint resumes
from it (so raising ``--epochs`` later extends finished runs); anything else starts afresh.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from bioprop.errors import BiopropError
from bioprop.presets import Preset, select_presets
from bioprop.rules import RULES
from bioprop.tasks import task_of_summary
from bioprop.training import TrainConfig
from bioprop.training.config import OptimizerConfig
from bioprop.training.checkpoint import save_json
from bioprop.training.interrupt import GENTLE_SIGNALS

SPEC = "spec.json"
RECORD = "reproduce.json"
PROTOCOLS = ("honest", "paper")
PAPER_PROTOCOL = {"protocol": "paper"}  # the variant of a run under the paper's protocol


# -- epoch budgets -----------------------------------------------------------------------------


@dataclass
class EpochBudget:
    """``--epochs 40 --epochs lc=15``: a default and per-pattern values (last match wins).

    A pattern is a dash-separated part of the preset name (``lc``, ``fc-dtp``, ``cifar``) or a
    glob (``mnist-lc-*``). ``default=None`` keeps each preset's own value (for epochs, the
    paper's 500). The same syntax serves ``--limit-batches``.
    """

    flag: str = "--epochs"

    default: int | None = None
    rules: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def parse(cls, values: list[str] | int | None, flag: str = "--epochs") -> "EpochBudget":
        budget = cls(flag=flag)
        if values is None:
            return budget
        if isinstance(values, int):
            values = [str(values)]
        for value in values:
            for part in str(value).split(","):
                part = part.strip()
                if not part:
                    continue
                key, _, number = part.rpartition("=")
                try:
                    epochs = int(number)
                except ValueError:
                    raise BiopropError(f"{flag} {part!r}: expected N or PATTERN=N (e.g. 40, lc=15)") from None
                if epochs < 1:
                    raise BiopropError(f"{flag} {part!r}: the number must be >= 1")
                if key:
                    budget.rules.append((key, epochs))
                else:
                    budget.default = epochs
        return budget

    def for_preset(self, name: str) -> int | None:
        import fnmatch

        chosen = self.default
        for pattern, epochs in self.rules:
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatch(name, pattern) \
                    or f"-{pattern}-" in f"-{name}-":
                chosen = epochs
        return chosen

    def describe(self) -> str:
        parts = [f"{self.default}" if self.default is not None else "preset default (500)"]
        parts += [f"{pattern}={epochs}" for pattern, epochs in self.rules]
        return ", ".join(parts)


# -- the plan ------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """One training run of the plan."""

    preset: str
    folder: str  # <run> above
    seed: int
    config: TrainConfig
    variant: dict = field(default_factory=dict)

    def path(self, root: Path) -> Path:
        return Path(root) / self.folder / f"seed{self.seed}"

    @property
    def tag(self) -> str:
        return f"{self.folder} seed{self.seed}"


def parse_int_list(text: str | None, what: str) -> list[int]:
    if text is None or text == "":
        return []
    try:
        values = [int(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError:
        raise BiopropError(f"{what} {text!r}: expected comma-separated integers, e.g. 0,128,512,1024") from None
    if any(v < 0 for v in values):
        raise BiopropError(f"{what} {text!r}: sizes must be >= 0")
    return values


def parse_grid(values: list[str] | None) -> dict[str, list]:
    """``--vary KEY=V1,V2`` (repeatable) -> ``{KEY: [V1, V2]}``; numbers become numbers, true and false
    booleans.

    A KEY is a rule option (``forward_reduction``, ``alpha``), an optimiser setting
    (:class:`~bioprop.training.config.OptimizerConfig`: ``eps``, ``eps_convention``, ``optimizer``,
    ``lr_schedule``, ...) for every parameter group of the rule or for one (``inverse.lr``), or
    ``val_size``."""
    grid: dict[str, list] = {}
    for value in values or []:
        key, sep, listed = str(value).partition("=")
        key = key.strip()
        choices = [_parse_value(v.strip()) for v in listed.split(",") if v.strip()]
        if not sep or not key or not choices:
            raise BiopropError(f"--vary {value!r}: expected KEY=V1,V2,... (e.g. forward_reduction=unit-sum,element-mean)")
        if key in grid:
            raise BiopropError(f"--vary {key}: given twice; list every value once, comma-separated")
        grid[key] = choices
    return grid


def _parse_value(text: str):
    if text.lower() in ("true", "false"):  # nesterov=true,false
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


ADAM_FIELDS = {f.name for f in dataclasses.fields(OptimizerConfig)}  # every optimiser setting, not only Adam's


def applies(key: str, rule: str) -> bool:
    """Whether ``--vary`` key ``key`` means something for rule ``rule``."""
    group, _, name = key.rpartition(".")
    if group:
        return group in RULES.get(rule).groups and name in ADAM_FIELDS
    return key in ADAM_FIELDS or key == "val_size" or has_option(rule, key)


def protocol_variants(protocol: str) -> list[dict]:
    """The variants ``--protocol`` adds to every run: honest -> none (the plain run), paper -> the
    paper's protocol (trained on all the training data: ``val_size`` 0), both -> the two."""
    choices = {"honest": [{}], "paper": [PAPER_PROTOCOL], "both": [{}, PAPER_PROTOCOL]}
    if protocol not in choices:
        raise BiopropError(f"--protocol {protocol!r}: expected honest (a held-out validation split selects the "
                           "epoch), paper (all training data, the best test error) or both")
    return choices[protocol]


def variant_folder(preset: str, variant: dict) -> str:
    """``<preset>.KEY=VALUE...`` (the AO-SDTP size sweep keeps its ``<preset>.aux-<n>``)."""
    return preset + "".join(f".{key}={value}" for key, value in variant.items())


def plan_runs(presets: list[Preset], seeds: int | list[int] = 3, epochs: EpochBudget | None = None,
              aux_sweep: list[int] | None = None, limit_batches: EpochBudget | int | None = None,
              grid: dict[str, list] | None = None, protocol: str = "honest", **overrides) -> list[RunSpec]:
    """Every (preset or sweep variant) x seed, seed-major so that early results cover every cell.

    ``overrides`` are TrainConfig fields (``limit_eval_batches``, ``device``), ``data_dir`` or
    ``verify`` (False: skip the checksum comparison);
    ``limit_batches`` is a number or, like ``epochs``, per-pattern values.
    ``aux_sweep`` adds, for every preset whose rule has an ``aux_units`` option (AO-SDTP), one
    variant per auxiliary size (the preset's own size is the plain run).
    ``grid`` (:func:`parse_grid`) replaces each preset by every combination of the values of the
    keys that apply to its rule (folders :func:`variant_folder`), for studies of settings.
    ``protocol`` (:func:`protocol_variants`): "paper" runs every one of these under the paper's
    protocol instead (folders ending in ``.protocol=paper``), "both" runs both.
    """
    if isinstance(seeds, int):
        if seeds < 1:
            raise BiopropError(f"--seeds {seeds}: expected a positive number of seeds")
        seeds = list(range(seeds))
    epochs = epochs or EpochBudget()
    if not isinstance(limit_batches, EpochBudget):
        limit_batches = EpochBudget.parse(limit_batches, "--limit-batches")
    data_dir = overrides.pop("data_dir", None)
    verify = overrides.pop("verify", None)
    grid = grid or {}
    protocols = protocol_variants(protocol)
    if "protocol" in grid:
        raise BiopropError("--vary protocol: use --protocol honest|paper|both")
    if "val_size" in grid and PAPER_PROTOCOL in protocols:
        raise BiopropError(f"--vary val_size with --protocol {protocol}: the paper's protocol trains on all the "
                           "training data (val_size 0)")
    for key in grid:
        if not any(applies(key, preset.rule) for preset in presets):
            raise BiopropError(f"--vary {key}: not an option of any selected rule ("
                               f"{', '.join(sorted({p.rule for p in presets}))}), an optimiser setting "
                               f"({', '.join(sorted(ADAM_FIELDS))}, or GROUP.SETTING) or val_size")
    variants: list[tuple[Preset, str, dict]] = []
    for preset in presets:
        keys = [key for key in grid if applies(key, preset.rule)]
        if keys:
            for values in itertools.product(*(grid[key] for key in keys)):
                variant = dict(zip(keys, values))
                variants.append((preset, variant_folder(preset.name, variant), variant))
        else:
            variants.append((preset, preset.name, {}))
        if aux_sweep and has_option(preset.rule, "aux_units"):
            own = preset.config().rule_options.get("aux_units")
            for size in aux_sweep:
                if size != own:
                    variants.append((preset, f"{preset.name}.aux-{size}", {"aux_units": size}))
    variants = [(preset, folder + "".join(f".{k}={v}" for k, v in extra.items()), {**variant, **extra})
                for preset, folder, variant in variants for extra in protocols]
    if aux_sweep and not any(has_option(p.rule, "aux_units") for p in presets):
        raise BiopropError("--aux-sweep needs at least one AO-SDTP preset (e.g. cifar10 or 'cifar-*-ao-sdtp-*')")
    specs = []
    for seed in seeds:
        for preset, folder, variant in variants:
            config = preset.config(seed=seed, **{k: v for k, v in overrides.items() if v is not None})
            budget = epochs.for_preset(preset.name)
            if budget is not None:
                config.epochs = budget
            batches = limit_batches.for_preset(preset.name)
            if batches is not None:
                config.limit_batches = batches
            if data_dir is not None:
                config.data.data_dir = str(data_dir)
            if verify is not None:
                config.data.verify = bool(verify)
            apply_variant(config, variant)
            try:
                config.validate()
            except BiopropError as error:
                raise BiopropError(f"{folder}: {error}") from None
            specs.append(RunSpec(preset.name, folder, seed, config, variant))
    return specs


def apply_variant(config: TrainConfig, variant: dict) -> None:
    """Applies a variant to a config: rule options, optimiser settings (``eps`` or ``lr_schedule`` for
    every group of the rule, ``inverse.lr`` for one), ``val_size`` and ``protocol`` (paper: ``val_size`` 0)."""
    for key, value in variant.items():
        group, _, name = key.rpartition(".")
        if key == "val_size":
            config.data.val_size = value
        elif key == "protocol":
            if value not in PROTOCOLS:
                raise BiopropError(f"protocol {value!r}: expected honest or paper")
            if value == "paper":
                config.data.val_size = 0
        elif group or key in ADAM_FIELDS:
            for each in ([group] if group else RULES.get(config.rule).groups):
                config.optimizers[each] = dataclasses.replace(config.optimizer_settings(each), **{name: value})
        else:
            config.rule_options[key] = value


def has_option(rule: str, option: str) -> bool:
    return option in {field.name for field in dataclasses.fields(RULES.get(rule).Options)}


def run_state(path: Path, epochs: int) -> tuple[str, int]:
    """("done" | "partial" | "new", epochs done) for the run folder ``path``."""
    metrics = path / "metrics.jsonl"
    done = 0
    if metrics.exists():
        done = sum(1 for line in metrics.read_text().splitlines() if line.strip())
    if (path / "checkpoint.pt").exists():
        return ("done" if done >= epochs else "partial"), done
    if done >= epochs and (path / "results.json").exists():  # exported or checkpoint removed
        return "done", done
    return "new", done


# -- running -----------------------------------------------------------------------------------


#: set in a process whose run was stopped by a signal, or a worker told to stop while idle: it
#: starts no other run (a worker of a --jobs pool may already hold the next ones when Ctrl-C arrives)
_INTERRUPTED = False


def _start_worker() -> None:
    """A --jobs worker ignores Ctrl-C while idle (the terminal sends it to the whole process group;
    the parent forwards the stop as SIGUSR1) and remembers a stop that arrives between runs; during a
    run the Trainer's own handlers take over (:mod:`bioprop.training.interrupt`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for number in GENTLE_SIGNALS:
        signal.signal(number, _stop_requested)


def _stop_requested(number, frame) -> None:
    global _INTERRUPTED
    _INTERRUPTED = True


@contextmanager
def _signals_stop_the_pool():
    """SIGTERM (``kill``, SLURM, Kubernetes) and SIGUSR1 stop a --jobs pool as Ctrl-C does: a
    ``KeyboardInterrupt`` here, whose argument names the signal, which :func:`_forward_stop` passes on."""
    def stop(number, frame):
        raise KeyboardInterrupt(signal.Signals(number).name)

    numbers = [signal.SIGTERM, *GENTLE_SIGNALS]
    main = threading.current_thread() is threading.main_thread()
    previous = {number: signal.signal(number, stop) for number in numbers} if main else {}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _forward_stop(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C or SIGTERM reached this process (perhaps only this one: ``kill PID``): every worker is
    asked to stop too, its run after the step it is in, with a checkpoint, and the runs it already
    holds are refused. SIGUSR1, which never escalates, so a worker that the terminal's Ctrl-C reached
    as well still writes its checkpoint."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        for number in GENTLE_SIGNALS:
            try:
                os.kill(process.pid, number)
            except OSError:  # already gone
                pass


def _execute(spec_dict: dict, root: str, progress: bool, threads: int | None, echo: bool) -> dict:
    """Trains one run (in this process or a worker process); returns its summary."""
    import torch

    from bioprop.training import Trainer, TrainingInterrupted, distributed

    global _INTERRUPTED
    if _INTERRUPTED:
        raise KeyboardInterrupt(f"{spec_dict['folder']}: not started, the job was interrupted")

    if threads:
        torch.set_num_threads(threads)
    config = TrainConfig.from_dict(spec_dict["config"])
    path = Path(root) / spec_dict["folder"] / f"seed{config.seed}"
    parallel = distributed.join(config.device)
    parallel.barrier()  # under torchrun: every process has finished the previous run
    if parallel.is_main:
        path.mkdir(parents=True, exist_ok=True)
    tag = f"{spec_dict['folder']} seed{config.seed}"
    with open(path / "train.log" if parallel.is_main else os.devnull, "a") as log_file:
        def log(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()
            if echo and parallel.is_main:
                print(f"[{tag}] {line}", flush=True)

        started = time.time()
        # resume=True also starts afresh when no checkpoint was written yet
        trainer = Trainer(config, out=path, resume=True, progress=progress, log=log)
        try:
            trainer.fit()
        except TrainingInterrupted:
            _INTERRUPTED = True
            raise
    from bioprop.training import summarize

    return {"tag": tag, "summary": summarize(trainer.metrics), "seconds": time.time() - started}


def write_spec(root: Path, spec: RunSpec) -> None:
    target = Path(root) / spec.folder / SPEC
    if not target.exists():
        save_json({"preset": spec.preset, "variant": spec.variant}, target)


def record_command(root: Path, argv: list[str] | None) -> None:
    """Remember the command line in ``DIR/reproduce.json`` (shown by the report)."""
    if not argv:
        return
    path = Path(root) / RECORD
    record = json.loads(path.read_text()) if path.exists() else {"commands": []}
    command = "bioprop " + " ".join(shlex.quote(a) for a in argv)
    if command not in record["commands"]:
        record["commands"].append(command)
    save_json(record, path)


def reproduce(specs: list[RunSpec], out: str | Path, jobs: int = 1, progress: bool = False,
              log: Callable[[str], None] = print, echo_epochs: bool = True,
              threads: int | None = None) -> dict[str, list[RunSpec]]:
    """Runs every spec not done yet, ``jobs`` at a time with ``threads`` torch threads each
    (default: CPU cores / jobs); returns {"skipped": [...], "ran": [...], "failed": [...]}."""
    from bioprop.training import distributed

    root = Path(out)
    if jobs < 1:
        raise BiopropError(f"--jobs {jobs}: expected a positive number of parallel runs")
    parallel = distributed.join(specs[0].config.device if specs else "auto")
    if parallel.enabled and jobs != 1:
        raise BiopropError("--jobs: under torchrun the processes train each run together; use --jobs 1")
    if not parallel.is_main:  # every process trains every run with rank 0; only rank 0 writes and logs
        log = lambda line: None  # noqa: E731
    else:
        root.mkdir(parents=True, exist_ok=True)
    todo, skipped = [], []
    for spec in specs:
        if parallel.is_main:
            write_spec(root, spec)
        state, done = run_state(spec.path(root), spec.config.epochs)
        if state == "done":
            skipped.append(spec)
        else:
            todo.append(spec)
            log(f"{'resume' if state == 'partial' else 'start '} {spec.tag}: "
                f"{done}/{spec.config.epochs} epochs done")
    log(f"{len(specs)} runs: {len(skipped)} already done, {len(todo)} to run, {jobs} at a time")
    ran, failed = [], []
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)

    def finished(spec: RunSpec, result: dict) -> None:
        s = result["summary"]
        task = task_of_summary(s)
        metric, shown = task.metric, task.format_metric
        honest = s.get(f"test_{metric}_at_best_val")
        log(f"done   {spec.tag}: {s.get('epochs')} epochs in {result['seconds']:.0f}s, best test "
            f"{metric.replace('_', ' ')} {shown(s.get(f'best_test_{metric}', float('nan'))).strip()}"
            + (f", test at best val {shown(honest).strip()}" if honest is not None else ""))
        ran.append(spec)

    def failure(spec: RunSpec, error: Exception) -> None:
        failed.append(spec)
        log(f"FAILED {spec.tag}: {type(error).__name__}: {error} (see {spec.path(root)}/train.log)")

    if jobs == 1:
        for spec in todo:
            try:
                result = _execute({"folder": spec.folder, "config": spec.config.to_dict()}, str(root),
                                  progress, threads, echo_epochs)
            except Exception as error:  # one broken run must not lose the others
                failure(spec, error)
                continue
            finished(spec, result)
    else:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_start_worker)
        with _signals_stop_the_pool():
            try:
                futures = {pool.submit(_execute, {"folder": s.folder, "config": s.config.to_dict()}, str(root),
                                       False, threads, False): s for s in todo}
                for future in as_completed(futures):
                    spec = futures[future]
                    try:
                        result = future.result()
                    except Exception as error:  # one broken run must not lose the others
                        failure(spec, error)
                        continue
                    finished(spec, result)
            except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the running runs checkpoint and stop; start no other
                _forward_stop(pool)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    return {"skipped": skipped, "ran": ran, "failed": failed}


def current_argv() -> list[str]:
    return sys.argv[1:]
