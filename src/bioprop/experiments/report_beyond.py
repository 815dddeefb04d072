"""The report's sections on the rules beyond the paper, beside the paper's, and on alignment.

For each dataset with runs: one table of every rule that ran (the paper's cells and the
:mod:`bioprop.presets.beyond` presets) on each architecture, with the same budget columns, their
learning curves, and, for runs trained with ``--alignment-every``, the per-layer angle plots of
:func:`bioprop.experiments.plots.alignment_grid`.
"""

from __future__ import annotations

from pathlib import Path

from bioprop.experiments import plots
from bioprop.experiments.runs import Run, diagnostic_curve, epochs_run, row_diagnostics, seeds_cell, stat
from bioprop.presets import PRESETS, Preset, sort_key


def _presets(dataset: str, by_preset: dict[str, list[Run]]) -> list[Preset]:
    chosen = [PRESETS.get(name) for name in by_preset if name in PRESETS]
    return sorted([p for p in chosen if p.dataset == dataset and not p.autoencoder], key=sort_key)


def _curves(runs: list[Run], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    keys = sorted({key for run in runs for row in run.metrics for key in row_diagnostics(row)
                   if key.startswith(prefix)}, key=_layer_order)
    return {key[len(prefix):]: diagnostic_curve(runs, key) for key in keys}


def _layer_order(key: str):
    name = key.rsplit("/", 1)[-1]
    digits = name[len("layer"):] if name.startswith("layer") else ""
    return (0, int(digits), name) if digits.isdigit() else (1, 0, name)


def _final_angles(runs: list[Run]) -> str:
    """The last epoch's update angles, layer by layer (mean over seeds), as '84/61/.../0'."""
    curves = _curves(runs, "update_angle/")
    return "/".join(f"{values[-1]:.0f}" for _, values in curves.values() if values) or "–"


def _learning_rates(runs: list[Run]) -> str:
    """The forward group's learning rate the runs trained with (as their configs say), e.g. '0.001'."""
    rates = sorted({run.config.get("optimizers", {}).get("forward", {}).get("lr") for run in runs} - {None})
    return ", ".join(f"{rate:.3g}" for rate in rates) or "–"


def beyond_section(dataset: str, by_preset: dict[str, list[Run]], out: Path) -> list[str]:
    """Markdown (and figures in ``out``) for one dataset; empty when no rule beyond the paper ran and
    no run measured alignment."""
    presets = _presets(dataset, by_preset)
    has_beyond = any(p.beyond for p in presets)
    aligned = [p for p in presets if _curves(by_preset[p.name], "update_angle/")]
    if not has_beyond and not aligned:
        return []
    md = ["### Every rule, the paper's and those beyond it", "",
          "Same networks, data, budget and selection for every rule; the rules beyond the paper use the "
          "Table 5 settings of the rule they extend (`bioprop presets --decisions`), untuned, except what "
          "a rule's presets set themselves (the forward-only and energy-based rules: a learning rate from a "
          "small search); *lr* is the forward learning rate the runs used. Update angles: each layer's "
          "angle (degrees) between the rule's weight update and backprop's gradient at the last epoch, "
          "input layer first (0 = backprop's direction, 90 = none).", "",
          "| Arch | Rule | lr | test at best val | best test | train (last) | seeds | epochs | update angles |",
          "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for preset in presets:
        runs = by_preset[preset.name]
        tag = "" if preset.beyond else " (paper)"
        md.append(f"| {preset.cell.arch.upper()} | {preset.label}{tag} | {_learning_rates(runs)} | "
                  f"{stat(runs, 'test_error_at_best_val').fmt()} | {stat(runs, 'best_test_error').fmt()} | "
                  f"{stat(runs, 'final_train_error').fmt()} | {seeds_cell(runs)} | {epochs_run(runs)} | "
                  f"{_final_angles(runs)} |")
    md.append("")
    for arch in ("fc", "lc"):
        chosen = [p for p in presets if p.cell.arch == arch]
        if any(p.beyond for p in chosen):
            name = f"curves-{dataset}-{arch}-every-rule.png"
            plots.learning_curves([(p.cell.method, p.label, by_preset[p.name]) for p in chosen], out / name,
                                  f"{dataset} {arch.upper()}, every rule")
            md += [f"![{dataset} {arch.upper()} every rule]({name})", ""]
        panels = [(p.label, _curves(by_preset[p.name], "update_angle/"), _curves(by_preset[p.name], "feedback_angle/"))
                  for p in chosen if p in aligned]
        if panels:
            name = f"alignment-{dataset}-{arch}.png"
            plots.alignment_grid(panels, out / name, f"{dataset} {arch.upper()}")
            md += [f"![{dataset} {arch.upper()} alignment with backprop]({name})", ""]
    return md
