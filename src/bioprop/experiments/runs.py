"""Reading finished (or partial) runs back, and aggregating them over seeds.

Two layouts are read, so that a report can be rebuilt from either:

* a reproduce folder: ``<root>/<run>/spec.json`` and ``<root>/<run>/seed<k>/{config.json,
  metrics.jsonl}`` (checkpoints are not needed);
* an exported folder (what ``bioprop report --out`` writes next to the report, small enough to
  commit): ``<root>/runs/<run>/seed<k>.json`` holding preset, variant, config, summary and
  every metrics row.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from bioprop.presets import PRESETS, Preset
from bioprop.training.checkpoint import save_json
from bioprop.training.results import summarize

EXPORT = "runs"
_SEED = re.compile(r"^seed(\d+)$")


@dataclass
class Run:
    folder: str  # the <run> folder name (preset, or preset.aux-N)
    preset: str
    seed: int
    config: dict
    metrics: list[dict]
    variant: dict = field(default_factory=dict)
    status: str = "ok"  # "diverged" when training stopped on a non-finite value (results.json)

    @property
    def summary(self) -> dict:
        return summarize(self.metrics)

    @property
    def budget(self) -> int:
        """The epochs the run was meant to train: its config's ``epochs`` (the epochs done when unknown)."""
        return int(self.config.get("epochs") or self.summary["epochs"])

    @property
    def state(self) -> str:
        """"diverged", "unfinished" (fewer epochs than its budget) or "ok"; only "ok" runs are averaged."""
        if self.status == "diverged":
            return "diverged"
        return "unfinished" if self.summary["epochs"] < self.budget else "ok"

    @property
    def preset_obj(self) -> Preset | None:
        return PRESETS.get(self.preset) if self.preset in PRESETS else None

    def export(self) -> dict:
        return {"folder": self.folder, "preset": self.preset, "variant": self.variant, "seed": self.seed,
                "status": self.status, "config": self.config, "summary": self.summary, "metrics": self.metrics}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_runs(root: str | Path) -> list[Run]:
    """Every run with at least one epoch of metrics under ``root`` (either layout)."""
    root = Path(root)
    runs: list[Run] = []
    export = root / EXPORT
    if export.is_dir():
        for file in sorted(export.glob("*/seed*.json")):
            data = json.loads(file.read_text())
            runs.append(Run(data["folder"], data["preset"], int(data["seed"]), data["config"], data["metrics"],
                            data.get("variant", {}), data.get("status", "ok")))
    for spec_file in sorted(root.glob("*/spec.json")):
        spec = json.loads(spec_file.read_text())
        for seed_dir in sorted(spec_file.parent.iterdir()):
            match = _SEED.match(seed_dir.name)
            metrics_file = seed_dir / "metrics.jsonl"
            if not (match and metrics_file.exists()):
                continue
            metrics = _read_jsonl(metrics_file)
            if not metrics:
                continue
            config = json.loads((seed_dir / "config.json").read_text()) if (seed_dir / "config.json").exists() else {}
            results = seed_dir / "results.json"
            status = json.loads(results.read_text()).get("status", "ok") if results.exists() else "ok"
            runs.append(Run(spec_file.parent.name, spec["preset"], int(match.group(1)), config, metrics,
                            spec.get("variant", {}), status))
    # a folder present in both layouts: the live run folder wins (it may have more epochs)
    unique: dict[tuple[str, int], Run] = {}
    for run in runs:
        unique[(run.folder, run.seed)] = run
    return sorted(unique.values(), key=lambda r: (r.folder, r.seed))


def at_epochs(runs: list[Run], epochs: int) -> list[Run]:
    """Every run read as an ``epochs``-epoch run, to compare runs of different lengths at one budget
    (``bioprop report --epochs``): its metrics up to that epoch, its budget ``epochs``. A run that
    did not reach it is unfinished (left out of the means); one that diverged after it was fine
    there (a diverged run's metrics hold its good epochs only)."""
    read = []
    for run in runs:
        metrics = [row for row in run.metrics if int(row["epoch"]) <= epochs]
        if not metrics:
            continue
        status = "ok" if run.status == "diverged" and len(run.metrics) >= epochs else run.status
        read.append(replace(run, metrics=metrics, config={**run.config, "epochs": epochs}, status=status))
    return read


def export_runs(runs: list[Run], out: str | Path) -> list[Path]:
    """Writes the compact per-run JSON files (no checkpoints) under ``out/runs/``."""
    paths = []
    for run in runs:
        path = Path(out) / EXPORT / run.folder / f"seed{run.seed}.json"
        save_json(run.export(), path)
        paths.append(path)
    return paths


# -- aggregation ------------------------------------------------------------------------------


@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def fmt(self, digits: int = 2) -> str:
        if not self.values:
            return "–"
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def counted(runs: list[Run]) -> list[Run]:
    """The runs that seed averages take in: finished and not diverged (``Run.state == "ok"``)."""
    return [run for run in runs if run.state == "ok"]


def stat(runs: list[Run], key: str) -> Stat:
    """Mean ± std over seeds of summary ``key``, over the :func:`counted` runs only: a diverged or
    unfinished seed is left out (say so beside the number with :func:`excluded`)."""
    values = [run.summary.get(key) for run in counted(runs)]
    return Stat([float(v) for v in values if v is not None and not math.isnan(float(v))])


def excluded(runs: list[Run]) -> str:
    """What :func:`stat` left out of ``runs``, e.g. "1 diverged, excluded; 1 unfinished (20/100
    epochs), excluded"; "" when every seed counts."""
    notes = []
    diverged = [run for run in runs if run.state == "diverged"]
    if diverged:
        notes.append(f"{len(diverged)} diverged, excluded")
    unfinished = [run for run in runs if run.state == "unfinished"]
    if unfinished:
        done = ", ".join(f"{run.summary['epochs']}/{run.budget}" for run in unfinished)
        notes.append(f"{len(unfinished)} unfinished ({done} epochs), excluded")
    return "; ".join(notes)


def seeds_cell(runs: list[Run]) -> str:
    """The seeds a row averages and what it left out: "3", or "2; 1 diverged, excluded"."""
    note = excluded(runs)
    return f"{len(counted(runs))}" + (f"; {note}" if note else "")


def epochs_run(runs: list[Run]) -> str:
    """The epochs the :func:`counted` runs reached (all runs when none counts), as numbers in order:
    "100" or "20, 100". An unfinished seed's progress is :func:`excluded`'s to say ("1 unfinished
    (21/100 epochs), excluded"), not this column's."""
    shown = counted(runs) or runs
    return ", ".join(str(e) for e in sorted({int(run.summary["epochs"]) for run in shown}))


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.folder, []).append(run)
    return groups


def mean_curve(runs: list[Run], key: str) -> tuple[list[int], list[float]]:
    """Epochs and the mean of ``key`` over the runs that reached each epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for row in run.metrics:
            value = row.get(key)
            if value is not None:
                by_epoch.setdefault(int(row["epoch"]), []).append(float(value))
    epochs = sorted(by_epoch)
    return epochs, [statistics.fmean(by_epoch[e]) for e in epochs]


def row_diagnostics(row: dict) -> dict[str, float]:
    """An epoch row's diagnostics (per-epoch rules' diagnostics and alignment metrics): the row's own,
    or, for multi-pass epochs, every pass's merged (later passes win: the forward pass comes last)."""
    merged: dict[str, float] = {}
    for part in row.get("passes", []):
        merged.update(part.get("diagnostics", {}))
    merged.update(row.get("diagnostics", {}))
    return merged


def diagnostic_curve(runs: list[Run], key: str) -> tuple[list[int], list[float]]:
    """Epochs and the mean over runs of diagnostic ``key`` (e.g. ``update_angle/layer1``)."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for row in run.metrics:
            value = row_diagnostics(row).get(key)
            if value is not None and math.isfinite(float(value)):
                by_epoch.setdefault(int(row["epoch"]), []).append(float(value))
    epochs = sorted(by_epoch)
    return epochs, [statistics.fmean(by_epoch[e]) for e in epochs]
