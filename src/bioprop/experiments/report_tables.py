"""The report's tables against the paper, for one dataset at a time (mean ± std over seeds):

* :func:`verdict_table`: one row per cell, the paper's test error beside ours under honest model
  selection and under the paper's protocol, each with its :func:`verdict`;
* :func:`error_table`: the paper's Table 1 layout (methods by architecture), paper | ours | Δ;
* :func:`train_table`: train error at the best-test epoch and at the last epoch;
* :func:`imagenet_table`: Table 2, top-1 and top-5;
* :func:`details_table`: every run folder, its seeds, epochs, speed and per-seed numbers.

A diverged or unfinished seed is never averaged in: every mean leaves it out and its cell says so
(:func:`bioprop.experiments.runs.stat`, :func:`bioprop.experiments.runs.excluded`).
"""

from __future__ import annotations

from typing import Callable

from bioprop.experiments.reproduce import PAPER_PROTOCOL, variant_folder
from bioprop.experiments.runs import Run, Stat, counted, epochs_run, excluded, seeds_cell, stat
from bioprop.presets import Preset, list_presets
from bioprop.presets.paper import METHODS

FALLBACK = " (honest runs)"  # marks a paper's-protocol number taken from the honest runs
TOLERANCE = 0.3  # percentage points: "reproduced" means within the paper's number ± this, or better


def runs_by_preset(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs of the plain presets (sweep variants are left to the Figure 4 section)."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        if run.folder == run.preset:
            out.setdefault(run.preset, []).append(run)
    return out


def paper_protocol_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs under the paper's protocol (folders ``<preset>.protocol=paper``: all the training data), by preset."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        if run.folder == variant_folder(run.preset, PAPER_PROTOCOL):
            out.setdefault(run.preset, []).append(run)
    return out


def cell_presets(dataset: str) -> dict[tuple[str, str], Preset]:
    """The paper's cells of ``dataset`` by (architecture, method) (the rules beyond the paper have their
    own section)."""
    return {(p.cell.arch, p.cell.method): p for p in list_presets()
            if p.dataset == dataset and not p.beyond and not p.autoencoder}


def _delta(ours: Stat, paper: float | None) -> str:
    if paper is None or ours.mean is None:
        return "–"
    return f"{ours.mean - paper:+.2f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _protocol_source(name: str, by_preset: dict[str, list[Run]],
                     by_paper: dict[str, list[Run]]) -> tuple[list[Run], str]:
    """The runs for a cell's number under the paper's protocol and a label: its ``protocol=paper`` runs
    (label ""), else its honest runs (label :data:`FALLBACK`: they trained without the validation split)."""
    if by_paper.get(name):
        return by_paper[name], ""
    return by_preset.get(name, []), FALLBACK


def _cell(runs: list[Run], key: str, label: str = "") -> str:
    """Mean ± std of summary ``key`` over the seeds that count, then ``label``, then any seeds left out."""
    if not runs:
        return "not run"
    note = excluded(runs)
    return stat(runs, key).fmt() + label + (f" (n={len(counted(runs))}; {note})" if note else "")


def _archs(cells: dict[tuple[str, str], Preset]) -> list[str]:
    """The architectures among ``cells``, FC first."""
    return [a for a in ("fc", "lc") if any(arch == a for arch, _ in cells)]


def _method_rows(cells: dict[tuple[str, str], Preset], archs: list[str], width: int,
                 columns: Callable[[Preset], list[str]]) -> list[str]:
    """The rows of a methods-by-architecture table: one per method of the paper that has a cell, its
    label, then for each architecture the ``width`` columns of that cell (blank where it has none)."""
    lines = []
    for method, label in METHODS.items():
        if not any((a, method) in cells for a in archs):
            continue
        row = [label]
        for arch in archs:
            preset = cells.get((arch, method))
            row += [""] * width if preset is None else columns(preset)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def error_table(dataset: str, by_preset: dict[str, list[Run]], key: str, paper_key: str,
                by_paper: dict[str, list[Run]] | None = None) -> list[str]:
    """The paper's table with ours beside it; with ``by_paper``, ours under the paper's protocol
    (:func:`_protocol_source`)."""
    cells = cell_presets(dataset)
    archs = _archs(cells)
    fashion = dataset == "fashion-mnist"
    ref = "published" if fashion else "paper"

    def columns(preset: Preset) -> list[str]:  # paper | ours | Δ
        numbers = preset.cell.published if fashion else preset.cell.paper
        paper = getattr(numbers, paper_key) if numbers is not None else None
        runs, label = (by_preset.get(preset.name, []), "") if by_paper is None else \
            _protocol_source(preset.name, by_preset, by_paper)
        return [_num(paper), _cell(runs, key, label), _delta(stat(runs, key), paper)]

    header = "| Method | " + " | ".join(f"{a.upper()} {ref} | {a.upper()} ours | Δ" for a in archs) + " |"
    return [header, "|---|" + "---:|---:|---:|" * len(archs)] + _method_rows(cells, archs, 3, columns)


def verdict(ours: float | None, paper: float | None, std: float | None = None) -> str:
    """"better", "within ±0.3" or "worse by X" for one cell (test errors in %); with the seeds' ``std``,
    ", boundary within 1 std" when paper ± 0.3 lies inside ours ± std (other seeds could flip it)."""
    if ours is None or paper is None:
        return "–"
    if ours < paper - TOLERANCE:
        text = f"better ({ours - paper:+.2f})"
    elif ours <= paper + TOLERANCE:
        text = f"within ±{TOLERANCE} ({ours - paper:+.2f})"
    else:
        text = f"**worse by {ours - paper:.2f}**"
    if std is not None and any(ours - std <= edge <= ours + std for edge in (paper - TOLERANCE, paper + TOLERANCE)):
        text += ", boundary within 1 std"
    return text


def verdict_table(dataset: str, by_preset: dict[str, list[Run]], by_paper: dict[str, list[Run]]) -> list[str]:
    """One row per cell: the paper's number; ours honest (test error at the best-validation epoch) and
    ours under the paper's protocol (:func:`_protocol_source`), each as mean ± std with the seeds it
    averages (n) and its verdict; the epochs run and the epoch each counted seed selected."""
    lines = ["| Cell | paper test | ours, honest: test at best val | n | verdict (±0.3 pp) "
             "| ours, paper's protocol: best test | n | verdict | epochs run | best-val epoch (per seed) |",
             "|---|---:|---:|---|---|---:|---|---|---:|---|"]
    cells = cell_presets(dataset)
    for (arch, method), preset in sorted(cells.items(), key=lambda kv: (kv[0][0], list(METHODS).index(kv[0][1]))):
        runs = by_preset.get(preset.name, [])
        protocol_runs, source = _protocol_source(preset.name, by_preset, by_paper)
        paper = preset.cell.paper.test_error if preset.cell.paper is not None else None
        label = f"{arch.upper()} {preset.label}"
        if not runs and not protocol_runs:
            lines.append(f"| {label} | {_num(paper)} | not run | | | | | | | |")
            continue
        honest, best = stat(runs, "test_error_at_best_val"), stat(protocol_runs, "best_test_error")
        every = runs + [r for r in protocol_runs if r not in runs]
        selected = ", ".join(str(r.summary.get("best_val_epoch", "–")) for r in counted(runs)) or "–"
        honest_cells = [honest.fmt(), seeds_cell(runs), verdict(honest.mean, paper, honest.std)] if runs \
            else ["not run", "", ""]
        lines.append(f"| {label} | {_num(paper)} | {' | '.join(honest_cells)} | {best.fmt()}{source} | "
                     f"{seeds_cell(protocol_runs)} | {verdict(best.mean, paper, best.std)} | {epochs_run(every)} "
                     f"| {selected} |")
    return lines


def train_table(dataset: str, by_preset: dict[str, list[Run]]) -> list[str]:
    """Train error by method and architecture: the paper's (not for Fashion-MNIST), ours at the epoch of
    best test error (the paper's pairing) and at the last epoch."""
    cells = cell_presets(dataset)
    archs = _archs(cells)
    paper_col = dataset != "fashion-mnist"
    cols = (["paper"] if paper_col else []) + ["ours, at best-test epoch", "ours, last epoch"]

    def columns(preset: Preset) -> list[str]:
        runs = by_preset.get(preset.name, [])
        paper = [_num(preset.cell.paper.train_error)] if paper_col else []
        return paper + [_cell(runs, "train_error_at_best_test"), _cell(runs, "final_train_error")]

    header = "| Method | " + " | ".join(f"{a.upper()} {c}" for a in archs for c in cols) + " |"
    return [header, "|---|" + "---:|" * (len(cols) * len(archs))] + _method_rows(cells, archs, len(cols), columns)


def imagenet_table(by_preset: dict[str, list[Run]], by_paper: dict[str, list[Run]]) -> list[str]:
    """Table 2: top-1 and top-5 test error, honest and under the paper's protocol, beside the paper's."""
    lines = ["| Method | top-1 paper | top-1 ours, best-val epoch | Δ | top-1 ours, best over training | Δ "
             "| top-5 paper | top-5 ours, best-val epoch | top-5 ours, best over training |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (arch, method), preset in sorted(cell_presets("imagenet").items(), key=lambda kv: list(METHODS).index(kv[0][1])):
        runs = by_preset.get(preset.name, [])
        protocol_runs, source = _protocol_source(preset.name, by_preset, by_paper)
        honest, best = stat(runs, "test_error_at_best_val"), stat(protocol_runs, "best_test_error")
        p = preset.cell.paper
        if not runs and not protocol_runs:
            lines.append(f"| {preset.label} | {_num(p.test_error)} | not run | | | | {_num(p.test_top5_error)} | | |")
            continue
        lines.append(f"| {preset.label} | {_num(p.test_error)} | {_cell(runs, 'test_error_at_best_val')} "
                     f"| {_delta(honest, p.test_error)} | {_cell(protocol_runs, 'best_test_error', source)} "
                     f"| {_delta(best, p.test_error)} | {_num(p.test_top5_error)} "
                     f"| {_cell(runs, 'test_top5_error_at_best_val')} "
                     f"| {_cell(protocol_runs, 'best_test_top5_error', source)} |")
    return lines


def details_table(groups: dict[str, list[Run]]) -> list[str]:
    """One row per run folder: its seeds (and which were excluded), epochs, seconds per epoch, and its
    errors (mean ± std over seeds; the two test errors seed by seed)."""
    lines = ["| Run | seeds | epochs | s / epoch | best val error | test error at best val (per seed) "
             "| best test error (per seed) | last train error | last test error |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for folder, runs in groups.items():
        epochs = sorted({r.summary["epochs"] for r in runs})
        seconds = [row["seconds"] for r in runs for row in r.metrics if row.get("seconds") is not None]
        per_seed_honest = ", ".join(_num(r.summary.get("test_error_at_best_val")) for r in runs)
        per_seed_best = ", ".join(_num(r.summary.get("best_test_error")) for r in runs)
        seeds = ", ".join(f"{r.seed}" + ("" if r.state == "ok" else f" ({r.state}, excluded)") for r in runs)
        lines.append(f"| `{folder}` | {seeds} | "
                     f"{'/'.join(map(str, epochs))} | {sum(seconds) / max(1, len(seconds)):.1f} | "
                     f"{stat(runs, 'best_val_error').fmt()} | {per_seed_honest} | {per_seed_best} | "
                     f"{stat(runs, 'final_train_error').fmt()} | {stat(runs, 'final_test_error').fmt()} |")
    return lines
