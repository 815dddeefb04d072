"""The report's section on ``bioprop reproduce --vary`` studies, and its ``variants.csv``.

For every preset with runs in variant folders (``<preset>.KEY=VALUE...``; not the AO-SDTP
``.aux-<n>`` sweep, which has its Figure 4 section, nor ``<preset>.protocol=paper`` alone, which
has the paper's tables): one table with a row per variant folder, its settings as columns (one per
varied key), plus a row for the preset's own settings where its plain runs exist, sorted by the
test error at the best-validation epoch, best first. Diverged and unfinished seeds are counted
apart and left out of every mean (:func:`bioprop.experiments.runs.stat`). ``variants.csv`` holds
one row per run of these tables.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from bioprop.experiments.reproduce import ADAM_FIELDS, PAPER_PROTOCOL
from bioprop.experiments.runs import Run, epochs_run, seeds_cell, stat
from bioprop.presets import PRESETS, sort_key
from bioprop.rules import RULES
from bioprop.training.checkpoint import save_csv

NUMBERS = ("test_error_at_best_val", "best_test_error", "final_train_error", "final_test_error", "best_val_error")
CSV_NAME = "variants.csv"


def in_study(run: Run) -> bool:
    """Whether ``run`` is a variant of a ``--vary`` study: a variant folder other than the aux sweep's
    ``<preset>.aux-<n>`` and the paper's protocol alone."""
    variant = run.variant
    if run.folder == run.preset or not variant or variant == PAPER_PROTOCOL:
        return False
    return not (set(variant) == {"aux_units"} and run.folder == f"{run.preset}.aux-{variant['aux_units']}")


def own_value(run: Run, key: str) -> str:
    """The setting of a varied ``key`` in ``run``'s config: the preset's own, read from a plain run (or a
    variant's, for a key another study varied). ``key`` is an optimiser setting, a rule option, or a
    config field such as ``model``."""
    config = run.config
    optimizers = config.get("optimizers", {})
    group, _, name = key.rpartition(".")
    if key == "protocol":
        return "honest"
    if key == "val_size":
        return str(config.get("data", {}).get("val_size", "?"))
    if key in config and not isinstance(config[key], (dict, list)):  # model, rule, seed, ...
        return str(config[key])
    if group:
        return str(optimizers.get(group, {}).get(name, "?"))
    if key in ADAM_FIELDS:  # one value per parameter group: "0.001/0.0001" when they differ
        return "/".join(dict.fromkeys(str(settings.get(key, "?")) for settings in optimizers.values())) or "?"
    if key in config.get("rule_options", {}):
        return str(config["rule_options"][key])
    try:
        defaults = {f.name: f.default for f in dataclasses.fields(RULES.get(config.get("rule", "")).Options)}
    except Exception:  # noqa: BLE001 - a rule no longer registered: its default is unknown
        defaults = {}
    value = defaults.get(key, dataclasses.MISSING)
    return "?" if value is dataclasses.MISSING else str(value)


def _order(runs: list[Run]) -> tuple:
    """Rows with a test error at the best-validation epoch first, lowest first; then (paper's protocol:
    no validation split) by best test error; rows with no number last."""
    honest, best = stat(runs, "test_error_at_best_val").mean, stat(runs, "best_test_error").mean
    if honest is not None:
        return (0, honest)
    return (1, best) if best is not None else (2, math.inf)


def _table(folders: dict[str, list[Run]], plain: list[Run]) -> list[str]:
    """One preset's table: a row per variant folder (and its plain runs), best first."""
    keys = list(dict.fromkeys(key for runs in folders.values() for key in runs[0].variant))
    # a key another study of this preset varied: the setting this row's runs had
    rows = [([str(runs[0].variant[key]) if key in runs[0].variant else own_value(runs[0], key) for key in keys], runs)
            for runs in folders.values()]
    if plain:
        rows.append(([f"{own_value(plain[0], key)} (preset's own)" for key in keys], plain))
    rows.sort(key=lambda row: _order(row[1]))
    lines = ["| " + " | ".join(f"`{key}`" for key in keys) + " | n | test at best val | best test | train (last) "
             "| test (last) | epochs |", "|" + "---|" * len(keys) + "---|---:|---:|---:|---:|---:|"]
    for values, runs in rows:
        lines.append("| " + " | ".join(values) + f" | {seeds_cell(runs)} | "
                     f"{stat(runs, 'test_error_at_best_val').fmt()} | {stat(runs, 'best_test_error').fmt()} | "
                     f"{stat(runs, 'final_train_error').fmt()} | {stat(runs, 'final_test_error').fmt()} | "
                     f"{epochs_run(runs)} |")
    return lines


def _write_csv(runs: list[Run], path: Path) -> None:
    keys = list(dict.fromkeys(key for run in runs for key in run.variant))
    fields = ["folder", "preset", *keys, "seed", "status", "epochs", "budget", *NUMBERS]
    rows = [{"folder": run.folder, "preset": run.preset, **{k: run.variant.get(k, "") for k in keys},
             "seed": run.seed, "status": run.state, "epochs": run.summary["epochs"],
             "budget": run.budget, **{k: run.summary.get(k) for k in NUMBERS}} for run in runs]
    save_csv(rows, fields, path)


def variants_section(runs: list[Run], out: Path) -> list[str]:
    """Markdown for the ``--vary`` studies among ``runs`` (empty when there are none); writes
    ``out/variants.csv``."""
    studies: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        if in_study(run):
            studies.setdefault(run.preset, {}).setdefault(run.folder, []).append(run)
    if not studies:
        return []
    md = ["## Variants", "",
          "The `bioprop reproduce --vary KEY=V1,V2` studies (folders `<preset>.KEY=VALUE...`): one table per preset, "
          "one row per combination of settings, best first by the test error at the best-validation epoch (then, "
          "for runs without a validation split, by the best test error); the row marked *preset's own* is the "
          "preset's plain run. Means ± std over the seeds in n; diverged and unfinished seeds are counted apart "
          "and left out of the means.", ""]
    listed: list[Run] = []
    for name in sorted(studies, key=lambda n: (0, sort_key(PRESETS.get(n)), n) if n in PRESETS else (1, 0, n)):
        plain = [run for run in runs if run.folder == run.preset == name]
        preset = PRESETS.get(name) if name in PRESETS else None
        title = f"`{name}`" + (f" ({preset.dataset} {preset.cell.arch.upper()} {preset.label})" if preset else "")
        md += [f"### {title}", ""] + _table(studies[name], plain) + [""]
        listed += plain + [run for folder in studies[name].values() for run in folder]
    _write_csv(listed, Path(out) / CSV_NAME)
    md += [f"Every run of these tables: [`{CSV_NAME}`]({CSV_NAME}).", ""]
    return md
