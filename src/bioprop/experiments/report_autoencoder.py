"""``bioprop report``'s section on the MNIST autoencoder (Bartunov et al. 2018, App. 5.5).

From the runs of the :mod:`bioprop.presets.autoencoder` presets (DTP-parallel, SDTP-parallel, BP;
sweep variants of them as extra rows), read from the compact per-run JSON like every other section:

* a table: seeds, epochs, and the reconstruction error (mean squared error per pixel, the
  :mod:`bioprop.tasks` ``reconstruction`` metric) at the last epoch (train and test), the best test
  error over training and the test error at the best-validation epoch, mean ± std over seeds;
* Figure 6: train (dashed) and test (solid) reconstruction error by epoch, mean over seeds;
* Figure 7: the first test digits and each method's reconstructions of them after its last
  epoch (the ``reconstructions`` entry of that epoch's metrics row; the lowest seed that has one).
"""

from __future__ import annotations

from pathlib import Path

from bioprop.experiments import plots
from bioprop.experiments.runs import Run, epochs_run, seeds_cell, stat
from bioprop.presets import PRESETS, sort_key
from bioprop.tasks import decode_images

METRIC = "reconstruction_error"
CURVES = "autoencoder-curves.png"
GRID = "autoencoder-reconstructions.png"


def autoencoder_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """The autoencoder presets' runs by folder (plain presets in Fig. 6's order, then variants)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        preset = run.preset_obj
        if preset is not None and preset.autoencoder:
            groups.setdefault(run.folder, []).append(run)
    return dict(sorted(groups.items(), key=lambda item: (sort_key(PRESETS.get(item[1][0].preset)),
                                                        item[0] != item[1][0].preset, item[0])))


def label(folder: str, runs: list[Run]) -> str:
    """The method's label, with the variant's folder suffix where it is one (``BP (lr=0.001)``)."""
    preset = runs[0].preset_obj
    suffix = folder[len(preset.name):].lstrip(".")
    return preset.label + (f" ({suffix})" if suffix else "")


def reconstructions(runs: list[Run]) -> dict | None:
    """The last ``reconstructions`` record of the lowest seed that has one."""
    for run in sorted(runs, key=lambda r: r.seed):
        for row in reversed(run.metrics):
            if "reconstructions" in row:
                return row["reconstructions"]
    return None


def _table(groups: dict[str, list[Run]]) -> list[str]:
    lines = ["| Method | n (seeds) | epochs | last train | last test | best test over training | "
             "test at best val |", "|---|---:|---:|---:|---:|---:|---:|"]
    for folder, runs in groups.items():
        cells = [stat(runs, key).fmt(4) for key in (f"final_train_{METRIC}", f"final_test_{METRIC}",
                                                       f"best_test_{METRIC}", f"test_{METRIC}_at_best_val")]
        seeds = ", ".join(str(r.seed) for r in runs)
        lines.append(f"| {label(folder, runs)} | {seeds_cell(runs)} ({seeds}) | {epochs_run(runs)} | "
                     + " | ".join(cells) + " |")
    return lines


def autoencoder_section(runs: list[Run], out: Path) -> list[str]:
    """Markdown lines of the section (writing its two PNGs into ``out``); [] without autoencoder runs."""
    groups = autoencoder_runs(runs)
    if not groups:
        return []
    md = ["## MNIST autoencoder (App. 5.5, Figures 6 and 7)", "",
          "784-512-64-512-784 (tanh hidden units, linear output) trained to reconstruct its input, pixels "
          "on the [0, 1] scale, with L = ½‖h_L − x‖² per image; the error below is the mean squared error "
          "per pixel. The paper shows curves only (no table): its Fig. 6 spans about 0.005-0.02 over 500 "
          "epochs, and SDTP underfits but its reconstructions look comparable (Fig. 7). Hyperparameters: "
          "the MNIST-FC Table 5 column of each method (the paper gives none; `bioprop presets --decisions`).",
          ""]
    md += _table(groups) + [""]
    cells = [(runs[0].preset_obj.cell.method, label(folder, runs), runs) for folder, runs in groups.items()]
    plots.reconstruction_curves(cells, Path(out) / CURVES, "MNIST autoencoder, reconstruction error (Fig. 6)")
    md += [f"![MNIST autoencoder reconstruction error by epoch]({CURVES})", ""]
    records = [(label(folder, runs), reconstructions(runs)) for folder, runs in groups.items()]
    present = [(name, record) for name, record in records if record is not None]
    if present:
        first = present[0][1]
        rows = [("test images", decode_images(first["input"], first["shape"]))]
        rows += [(name, decode_images(record["output"], record["shape"])) for name, record in present]
        plots.reconstruction_grid(rows, Path(out) / GRID, "MNIST autoencoder: test digits and reconstructions "
                                                          "after the last epoch (Fig. 7)")
        md += [f"![MNIST autoencoder reconstructions]({GRID})", ""]
    missing = [name for name, record in records if record is None]
    if missing:
        md += [f"No reconstructions yet for {', '.join(missing)}: they are kept at a run's last epoch.", ""]
    return md
