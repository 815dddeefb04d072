"""``bioprop report``: the paper's tables with our numbers beside them, as Markdown + PNG.

For every dataset with runs, three tables (mean ± std over seeds, difference to the paper):

1. test error at the epoch of best validation error: honest model selection;
2. best test error over training: the paper's protocol (selects on the test set, optimistic), from
   the ``<preset>.protocol=paper`` runs (all the training data) where there are any, else from the
   honest runs, marked so;
3. train error, at the epoch of best test error (the paper's pairing) and at the last epoch;

and a verdict table with both beside the paper's number (:mod:`bioprop.experiments.report_tables`).
A diverged or unfinished seed is never averaged in: every mean leaves it out and its row says so
(:func:`bioprop.experiments.runs.stat`).

then learning curves (Figures 2/3/8 style), every seed per cell, the AO-SDTP auxiliary-size
sweep (Figure 4) where several sizes were run, the ``--vary`` studies
(:mod:`bioprop.experiments.report_variants`), the random-search histograms (Figure 5) of any
Optuna studies given, the epoch budget actually used (:mod:`bioprop.experiments.report_budget`),
and the commands that regenerate it all. Image links are relative, so the Markdown renders on GitHub.

:func:`write_report` reads the runs and the commands that made them, then puts the sections
together; each section is a function that returns its Markdown lines (and writes its figures).
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path

from bioprop.errors import BiopropError
from bioprop.experiments import plots
from bioprop.experiments.report_autoencoder import autoencoder_section
from bioprop.experiments.report_beyond import beyond_section
from bioprop.experiments.report_budget import budget_section
from bioprop.experiments.report_tables import (FALLBACK, TOLERANCE, cell_presets, details_table, error_table,
                                               imagenet_table, paper_protocol_runs, runs_by_preset, train_table,
                                               verdict, verdict_table)
from bioprop.experiments.report_variants import variants_section
from bioprop.experiments.reproduce import RECORD
from bioprop.experiments.runs import EXPORT, Run, at_epochs, excluded, export_runs, group_runs, load_runs, stat
from bioprop.presets import PRESETS
from bioprop.presets.paper import FASHION_MLP_OTHER, FASHION_SOURCE, METHODS
from bioprop.training.checkpoint import save_csv, save_json, save_text

DATASET_TITLES = {"mnist": "MNIST (Table 1a)", "fashion-mnist": "Fashion-MNIST (the Table 1a cells; no paper column)",
                  "cifar10": "CIFAR-10 (Table 1b)", "imagenet": "ImageNet (Table 2)"}
DATASET_ORDER = list(DATASET_TITLES)
SUMMARY_COLUMNS = ("epochs", "best_val_error", "test_error_at_best_val", "best_test_error", "final_train_error",
                   "final_test_error", "train_error_at_best_test", "test_top5_error_at_best_val",
                   "best_test_top5_error")  # results.csv: one row per run, these summary numbers

HOW_TO_READ = (
    "**How to read the tables.** Errors are in %, ours as mean ± std over seeds, Δ = ours − paper. "
    "*Test error at best validation epoch* selects the epoch on a held-out part of the training set "
    "(honest). *Best test error over training* selects on the test set itself, which is what the "
    "paper reports (\"best errors achieved in 500 epochs\"); it is optimistic. The paper also trained on "
    "all the training data: runs under its protocol (`bioprop reproduce --protocol paper`, folders "
    "`<preset>.protocol=paper`) do the same; where a cell has none, its number under the paper's protocol "
    f"is the best test error of the honest runs, marked{FALLBACK}, which trained without their validation "
    "split (e.g. 50,000 of MNIST's 60,000 images). n: the seeds a mean takes in; a seed that diverged or "
    "has not finished its epochs is left out and named.")
AGAINST_THE_PAPER = (
    f"Reproduced means ours is within the paper's number ± {TOLERANCE} percentage points, or "
    "better. The paper's numbers are single runs selected on the test set within 500 epochs; "
    "ours are means ± std over seeds within the epochs stated. *Honest*: test error at the "
    "best-validation epoch, trained without the held-out validation split. *Paper's protocol*: "
    "the best test error over training (selection on the test set) of runs trained on all the "
    f"training data (`<preset>.protocol=paper`), or, marked{FALLBACK}, of the honest runs. "
    "\"boundary within 1 std\": the paper's number ± 0.3 lies inside ours ± std, so other "
    "seeds could change the verdict.")
BEST_OVER_TRAINING = (
    "Ours: runs trained on all the training data (`<preset>.protocol=paper`), the lowest test error "
    f"over training (selection on the test set, as the paper did); marked{FALLBACK}: no such run, "
    "the lowest test error of the honest runs (trained without the validation split).")
SEARCH = ("Histograms of the best test accuracy reached by each configuration of each study "
          "(the paper's Figure 5 quantity); the search itself selected on validation error.")

__all__ = ["DATASET_ORDER", "DATASET_TITLES", "TOLERANCE", "verdict", "write_report"]


# -- reading -------------------------------------------------------------------------------------


def _source_folder(source: str | Path) -> Path:
    source = Path(source)
    if not source.is_dir():
        raise BiopropError(f"report: {str(source)!r} is not a folder; expected the --out folder of "
                           "`bioprop reproduce` (or an exported report folder)")
    return source


def _study_sources(root: Path, studies: list[str] | None) -> list[str]:
    """Optuna storage URLs: the ``studies`` given (paths become SQLite URLs), else the search
    databases found under ``root``."""
    urls = []
    for item in studies or []:
        urls.append(item if "://" in item else f"sqlite:///{Path(item).resolve()}")
    if not studies:
        for db in sorted(root.glob("search*.db")) + sorted(root.glob("*/search.db")):
            urls.append(f"sqlite:///{db.resolve()}")
    return urls


KEPT = ("note", "title", "epochs")  # settings kept with an exported report, so a rebuild gives the same one


def _commands_and_settings(source: Path, out: Path, given: dict) -> tuple[list[str], dict]:
    """The commands that made the runs (``source``'s :data:`RECORD`) and the report's settings
    (:data:`KEPT`): each one given, else the one kept with the report in ``out``, else ``source``'s.
    Kept in ``out``'s record when ``out`` is another folder or one was given, so that
    ``bioprop report <out>`` rebuilds the same report (read at the same epoch, with its title).
    A live runs folder (no exported ``runs/``) keeps only its note: a later ``reproduce`` there
    reports every run at its own budget, not at an epoch once asked for."""
    record_file = source / RECORD
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    kept = json.loads((out / RECORD).read_text()) if (out / RECORD).exists() else {}
    keys = KEPT if (out / EXPORT).is_dir() else ("note",)
    settings = {}
    for key in KEPT:
        sources = (given, kept, record) if key in keys else (given,)
        settings[key] = next((found[key] for found in sources if found.get(key) is not None), None)
    if out.resolve() != source.resolve() or any(given.get(key) is not None for key in keys):
        save_json({"commands": record.get("commands", []),
                   **{key: settings[key] for key in keys if settings[key] is not None}}, out / RECORD)
    return record.get("commands", []), settings


def _report_command(source: Path, out: Path, command: list[str] | None, epochs: int | None = None) -> str:
    """The ``bioprop report`` command line that rebuilds this report."""
    words = command or ["report", str(source)] + (["--out", str(out)] if out.resolve() != source.resolve() else [])
    words = words + (["--epochs", str(epochs)] if epochs else [])
    return "bioprop " + " ".join(shlex.quote(word) for word in words)


def _datasets(by_preset: dict[str, list[Run]], by_paper: dict[str, list[Run]]) -> list[str]:
    """The datasets whose table cells (not the autoencoder) have runs, in :data:`DATASET_ORDER`."""
    presets = [PRESETS.get(name) for name in {**by_preset, **by_paper} if name in PRESETS]
    return [d for d in DATASET_ORDER if any(p.dataset == d and not p.autoencoder for p in presets)]


# -- sections --------------------------------------------------------------------------------------


def _header(title: str | None, datasets: list[str], run_count: int, note: str | None) -> list[str]:
    md = [f"# {title or 'Reproduction of Bartunov et al. (2018): ' + ', '.join(datasets)}", ""]
    md += [f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `bioprop report` "
           f"from {run_count} runs.", ""]
    if note:
        md += [note, ""]
    return md + [HOW_TO_READ, ""]


def _fashion_note() -> list[str]:
    """Where Fashion-MNIST's published column comes from, and why it is context rather than a target."""
    return [f"Published column (FC only: BP, FA, DFA): {FASHION_SOURCE}. Their MLP has 6 hidden layers (ours: 5) and "
            "is trained with SGD for 100 epochs, so it is context, not a target. The same table "
            "has no DTP/SDTP; its other target-propagation-family rules reach: "
            + "; ".join(f"{k} {m:.2f} ± {s:.2f}" for k, (m, s) in FASHION_MLP_OTHER.items()) + ".", ""]


def _tables(dataset: str, by_preset: dict[str, list[Run]], by_paper: dict[str, list[Run]]) -> list[str]:
    """The dataset's tables against the paper (:mod:`bioprop.experiments.report_tables`)."""
    if dataset == "imagenet":
        return ["### Test error (top-1 and top-5)", ""] + imagenet_table(by_preset, by_paper) + [""]
    md = []
    if dataset != "fashion-mnist":
        md += ["### Against the paper", "", AGAINST_THE_PAPER, ""] + verdict_table(dataset, by_preset, by_paper) + [""]
    md += ["### Test error at best validation epoch (honest selection)", ""]
    md += error_table(dataset, by_preset, "test_error_at_best_val", "test_error") + [""]
    md += ["### Best test error over training (the paper's protocol)", "", BEST_OVER_TRAINING, ""]
    md += error_table(dataset, by_preset, "best_test_error", "test_error", by_paper) + [""]
    md += ["### Train error", ""] + train_table(dataset, by_preset) + [""]
    if dataset == "fashion-mnist":
        md += _fashion_note()
    return md


def _curves(dataset: str, by_preset: dict[str, list[Run]], out: Path) -> list[str]:
    """Learning curves of the paper's cells per architecture (mean over seeds; for MNIST also on the
    axes of the paper's Figure 8) and every seed of every cell, as PNGs in ``out``."""
    md = ["### Learning curves", ""]
    cells = cell_presets(dataset)
    for arch in ("fc", "lc"):
        chosen = [(p.cell.method, p.label, by_preset[p.name]) for (a, m), p in
                  sorted(cells.items(), key=lambda kv: list(METHODS).index(kv[0][1]))
                  if a == arch and p.name in by_preset]
        if not chosen:
            continue
        name, grid, what = f"curves-{dataset}-{arch}.png", f"cells-{dataset}-{arch}.png", f"{dataset} {arch.upper()}"
        plots.learning_curves(chosen, out / name, what, top5=dataset == "imagenet")
        plots.cell_grid(chosen, out / grid, what)
        md += [f"![{what} learning curves]({name})", ""]
        if dataset == "mnist":  # the paper's Figure 8 axes: 0-5 % (FC), 0-3 % (LC)
            figure8 = f"curves-{dataset}-{arch}-fig8-axes.png"
            plots.learning_curves(chosen, out / figure8, f"{what}, Fig. 8 axes", ylim=(0, 5.0 if arch == "fc" else 3.0))
            md += [f"![{what} on the axes of Figure 8]({figure8})", ""]
        md += [f"![{what} every seed]({grid})", ""]
    return md


def _aux_series(runs: list[Run], dataset: str) -> list[tuple[str, list[tuple[int, float, float | None, str]]]]:
    """Figure 4's data: per AO-SDTP cell run with several auxiliary output sizes, (label, [(size, mean,
    std, seeds left out)]) of the test error at the best-validation epoch."""
    sweeps: dict[str, dict[int, list[Run]]] = {}
    for run in runs:
        preset = run.preset_obj
        if preset is None or preset.dataset != dataset or preset.rule != "ao-sdtp" \
                or set(run.variant) - {"aux_units"}:  # --vary studies and the paper's protocol: elsewhere
            continue
        size = int(run.variant.get("aux_units", run.config.get("rule_options", {}).get("aux_units", 512)))
        sweeps.setdefault(run.preset, {}).setdefault(size, []).append(run)
    series = []
    for name, sizes in sorted(sweeps.items()):
        if len(sizes) < 2:
            continue
        preset = PRESETS.get(name)
        points = []
        for size, group in sizes.items():
            s = stat(group, "test_error_at_best_val")
            if s.mean is not None:
                points.append((size, s.mean, s.std, excluded(group)))
        series.append((f"{preset.cell.arch.upper()} {preset.label}", points))
    return series


def _aux_sweep(runs: list[Run], dataset: str, out: Path) -> list[str]:
    """Figure 4 and its table, where an AO-SDTP cell ran with several auxiliary output sizes."""
    series = _aux_series(runs, dataset)
    if not series:
        return []
    name = f"aux-sweep-{dataset}.png"
    plots.aux_sweep(series, out / name, f"{dataset}: AO-SDTP test error vs auxiliary output size (Fig. 4)")
    md = ["### AO-SDTP auxiliary output size (Figure 4)", "", f"![aux sweep]({name})", "",
          "| Cell | aux units | test error at best val |", "|---|---:|---:|"]
    for label, points in series:
        for size, mean, std, left_out in sorted(points):
            md.append(f"| {label} | {size} | {mean:.2f}{'' if std is None else f' ± {std:.2f}'}"
                      f"{f' ({left_out})' if left_out else ''} |")
    return md + [""]


def _dataset_section(dataset: str, runs: list[Run], by_preset: dict[str, list[Run]],
                     by_paper: dict[str, list[Run]], out: Path) -> list[str]:
    """Everything about one dataset: its tables, learning curves, the rules beyond the paper, Figure 4."""
    md = [f"## {DATASET_TITLES[dataset]}", ""]
    md += _tables(dataset, by_preset, by_paper)
    md += _curves(dataset, by_preset, out)
    md += beyond_section(dataset, by_preset, out)
    return md + _aux_sweep(runs, dataset, out)


def _histograms(urls: list[str]) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Per study in the Optuna storages ``urls``: its table rows and the best test accuracy of each
    configuration."""
    import optuna

    from bioprop.experiments.search import study_accuracies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lines, data = [], []
    for url in urls:
        try:
            names = optuna.study.get_all_study_names(storage=url)
        except Exception as error:  # noqa: BLE001 - a broken database should not stop the report
            raise BiopropError(f"study storage {url!r} could not be read: {error}") from None
        for name in names:
            study = optuna.load_study(study_name=name, storage=url)
            values, rows = study_accuracies(study)
            if values:
                data.append((name, values))
                lines.extend(rows)
    return lines, data


def _search_section(urls: list[str], out: Path) -> list[str]:
    """Figure 5 (random-search histograms) and the studies' best configurations; empty without studies."""
    if not urls:
        return []
    lines, data = _histograms(urls)
    if not data:
        return []
    plots.search_histograms(data, out / "search-histograms.png", "best test accuracy over training (%)")
    return ["## Random search (Figure 5)", "", SEARCH, "", "![search histograms](search-histograms.png)", "",
            "| Study | configurations | best validation error | its test error | its parameters |",
            "|---|---:|---:|---:|---|"] + lines + [""]


def _every_run_section(runs: list[Run]) -> list[str]:
    groups = group_runs(runs)
    return ["## Every run", ""] + details_table(groups) + [""] if groups else []


def _commands_section(commands: list[str]) -> list[str]:
    return ["## Commands", "", "These commands regenerate the runs (they resume or skip what is done) and this "
            "report:", "", "```sh"] + commands + ["```", ""]


# -- results.csv -----------------------------------------------------------------------------------


def _csv_rows(dataset: str, by_preset: dict[str, list[Run]], by_paper: dict[str, list[Run]]) -> list[dict]:
    """One row per run of ``dataset``'s presets, honest and under the paper's protocol: its summary
    numbers (:data:`SUMMARY_COLUMNS`) and the paper's."""
    rows = []
    for protocol, runs_of in (("honest", by_preset), ("paper", by_paper)):
        for preset_name, preset_runs in runs_of.items():
            preset = PRESETS.get(preset_name) if preset_name in PRESETS else None
            if preset is None or preset.dataset != dataset:
                continue
            for run in preset_runs:
                rows.append({"preset": preset_name, "protocol": protocol, "seed": run.seed, "status": run.state,
                             **{key: run.summary.get(key) for key in SUMMARY_COLUMNS},
                             "paper_test_error": preset.paper.test_error,
                             "paper_train_error": preset.paper.train_error})
    return rows


def _write_results_csv(rows: list[dict], out: Path) -> list[str]:
    """Writes ``out/results.csv`` and returns the report's line that links it (and ``runs/``, if there)."""
    if not rows:
        return []
    save_csv(rows, list(rows[0]), out / "results.csv")
    return ["Per-run numbers: [`results.csv`](results.csv)"
            + ("; every epoch of every run: [`runs/`](runs/)." if (out / EXPORT).is_dir() else "."), ""]


# -- the report ------------------------------------------------------------------------------------


def write_report(source: str | Path, out: str | Path | None = None, studies: list[str] | None = None,
                 title: str | None = None, command: list[str] | None = None, note: str | None = None,
                 epochs: int | None = None) -> Path:
    """Writes ``out/report.md`` (default ``out = source``) and its PNGs; when ``out`` differs
    from ``source``, also the compact per-run JSON files (every epoch, whatever ``epochs``), so
    ``out`` can be committed and the report rebuilt from it alone. ``epochs``: read every run at
    that epoch (:func:`~bioprop.experiments.runs.at_epochs`). ``note``, ``title`` and ``epochs`` are
    kept with the report: a rebuild without them uses the kept ones. Returns the path of the Markdown file."""
    source = _source_folder(source)
    out = Path(out) if out is not None else source
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(source)
    urls = _study_sources(source, studies)
    if not runs and not urls:
        raise BiopropError(f"report: no runs under {str(source)!r} (expected <run>/spec.json and "
                           "<run>/seed<k>/metrics.jsonl, or runs/<run>/seed<k>.json) and no search studies")
    if out.resolve() != source.resolve():
        export_runs(runs, out)
    commands, settings = _commands_and_settings(source, out, {"note": note, "title": title, "epochs": epochs})
    note, title, epochs = settings["note"], settings["title"], settings["epochs"]
    commands = commands + [_report_command(source, out, command, epochs)]
    if epochs is not None:
        runs = at_epochs(runs, epochs)

    by_preset, by_paper = runs_by_preset(runs), paper_protocol_runs(runs)
    datasets = _datasets(by_preset, by_paper)
    md = _header(title, datasets, len(runs), note)
    read_at = [f"- every run read at epoch {epochs} (`bioprop report --epochs {epochs}`): its later epochs "
               f"are ignored; a run that has not reached it is unfinished and left out"] if epochs else []
    md += ["## Budget", ""] + read_at + budget_section(runs) + [""]
    csv_rows = []
    for dataset in datasets:
        md += _dataset_section(dataset, runs, by_preset, by_paper, out)
        csv_rows += _csv_rows(dataset, by_preset, by_paper)
    md += variants_section(runs, out)
    md += _search_section(urls, out)
    md += autoencoder_section(runs, out)  # Figures 6-7 (App. 5.5), from the autoencoder presets' runs
    md += _every_run_section(runs)
    md += _commands_section(commands)
    md += _write_results_csv(csv_rows, out)
    path = out / "report.md"
    save_text("\n".join(md), path)
    return path
