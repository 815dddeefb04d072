"""The report's figures (matplotlib, Agg backend, PNG): learning curves as in the paper's
Figures 2, 3 and 8, the AO-SDTP auxiliary-size sweep (Figure 4), the random-search
histograms (Figure 5), and the MNIST autoencoder's reconstruction-error curves and
reconstructions (Figures 6 and 7).

Every curve stays on the chart: an error axis spans every value plotted (:func:`fit_error_axis`:
linear while the values lie within a decade, else symmetric-log, so a rule near 90 % and one near
1 % both read), a fixed axis (the paper's Figure 8 axes) names the curves it leaves out, and
legends sit outside the axes, beside them, where they cover no line."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from bioprop.experiments.runs import Run, mean_curve  # noqa: E402
from bioprop.presets.paper import METHODS  # noqa: E402
from bioprop.training.checkpoint import write_atomically  # noqa: E402

COLORS = dict(zip(METHODS, plt.get_cmap("tab10").colors))


def _color(method: str):
    """The paper's rows keep their tab10 colours; other rules get a stable tab20b colour by name."""
    if method in COLORS:
        return COLORS[method]
    return plt.get_cmap("tab20b")(sum(ord(c) * (i + 1) for i, c in enumerate(method)) % 20)


LOG_SPAN = 10.0  # a symmetric-log error axis once the highest value is more than this times the lowest (or 1 %)
ERROR_TICKS = (0, 0.5, 1, 2, 5, 10, 20, 50, 100)  # error (%) ticks of a symmetric-log axis
LEGEND_OUTSIDE = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def fit_error_axis(ax, values, floor: float = 1.0) -> None:
    """Scales ``ax``'s error axis (%) to show every one of ``values``, from 0 to just above the
    highest (at least ``floor``, at most 105): linear while the values lie within a decade (the
    highest at most :data:`LOG_SPAN` times the lowest, or 1 %), else symmetric-log (linear below
    1 %, logarithmic above), so that a curve near 90 % and one near 1 % are both readable."""
    values = _finite(values)
    if not values:
        ax.set_ylim(0, 100.0)
        return
    high, low = max(values), min(values)
    logarithmic = high > LOG_SPAN * max(low, 1.0)
    top = min(105.0, max(floor, (1.25 if logarithmic else 1.08) * high))  # the same headroom to the eye
    if logarithmic:
        ax.set_yscale("symlog", linthresh=1.0, linscale=0.5)
        ax.yaxis.set_major_locator(FixedLocator([t for t in ERROR_TICKS if t <= top]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylim(0, top)


def _off_the_axes(label: str, values: list[float], top: float) -> str:
    """``label``, marked when the whole curve lies above a fixed axis' ``top`` (it is not drawn)."""
    values = _finite(values)
    if values and min(values) > top:
        return f"{label} (off the axes: lowest {min(values):.1f} %)"
    return label


def _save(fig, path: Path, dpi: int) -> Path:
    """Writes ``fig`` to ``path`` (PNG, atomically: a crash mid-write leaves the previous file) and
    closes it."""
    try:
        write_atomically(path, lambda stream: fig.savefig(stream, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return path


def learning_curves(cells: list[tuple[str, str, list[Run]]], path: Path, title: str, top5: bool = False,
                    ylim: tuple[float, float] | None = None) -> Path:
    """One panel, all cells of one (dataset, architecture): mean over seeds of the train error
    (dashed) and test error (solid), as in Figures 2 and 8; ImageNet (``top5``): top-1 test
    solid, top-5 test dotted, as in Figure 3. ``cells`` = (method key, label, runs); ``ylim``
    fixes the error axis (curves wholly above it are named in the legend), else it spans every
    curve (:func:`fit_error_axis`). The legend sits to the right of the axes."""
    fig, ax = plt.subplots(figsize=(9.0, 4.5))
    plotted = []
    for method, label, runs in cells:
        color = _color(method)
        epochs, test = mean_curve(runs, "test_error")
        name = _off_the_axes(label, test, ylim[1]) if ylim else label
        ax.plot(epochs, test, "-", color=color, label=name, lw=1.6)
        other, style, width = ("test_top5_error", ":", 1.4) if top5 else ("train_error", "--", 1.1)
        e_other, values = mean_curve(runs, other)
        if e_other:
            ax.plot(e_other, values, style, color=color, lw=width, alpha=0.9)
        plotted += test + values
    if ylim:
        ax.set_ylim(*ylim)
    else:
        fit_error_axis(ax, plotted, floor=5.0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("error (%)" + (", symmetric-log axis" if ax.get_yscale() == "symlog" else ""))
    style = "top-1 test solid, top-5 test dotted" if top5 else "test solid, train dashed"
    clipped = f"; clipped at {ylim[1]:g} %" if ylim and any(v > ylim[1] for v in _finite(plotted)) else ""
    ax.set_title(f"{title} ({style}; mean over seeds{clipped})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=1 if len(cells) <= 14 else 2, **LEGEND_OUTSIDE)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def cell_grid(cells: list[tuple[str, str, list[Run]]], path: Path, title: str) -> Path:
    """Small multiples, one panel per cell: every seed's train (dashed), validation (dotted) and
    test (solid) error."""
    n = len(cells)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, (method, label, runs) in zip(axes.flat, cells):
        color = _color(method)
        values = []
        for run in runs:
            epochs = [row["epoch"] for row in run.metrics]
            for key, style, width in (("train_error", "--", 0.9), ("val_error", ":", 0.9), ("test_error", "-", 1.2)):
                ys = [row.get(key) for row in run.metrics]
                if any(y is not None for y in ys):
                    ax.plot(epochs, [y if y is not None else float("nan") for y in ys], style, color=color,
                            lw=width, alpha=0.85)
                    values += ys
        fit_error_axis(ax, values, floor=2.0)
        ax.set_title(f"{label} ({len(runs)} seed{'s' if len(runs) != 1 else ''})", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{title}: every seed; train dashed, validation dotted, test solid", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def aux_sweep(series: list[tuple[str, list[tuple[int, float, float | None]]]], path: Path, title: str) -> Path:
    """Figure 4: test error against the number of auxiliary output units.
    ``series`` = (label, [(aux_units, mean, std)])."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for label, points in series:
        points = sorted(points)
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        errs = [p[2] or 0.0 for p in points]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    ax.set_xlabel("auxiliary output units")
    ax.set_ylabel("test error at best validation epoch (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, **LEGEND_OUTSIDE)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def search_histograms(studies: list[tuple[str, list[float]]], path: Path, quantity: str) -> Path:
    """Figure 5: histograms of the best accuracy reached by each configuration of a study."""
    n = len(studies)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, studies):
        ax.hist(values, bins=min(20, max(5, len(values) // 2)), range=(0, 100), color="tab:blue", alpha=0.8)
        ax.set_title(f"{name} ({len(values)} configurations)", fontsize=9)
        ax.set_xlabel(quantity, fontsize=8)
        ax.set_ylabel("configurations", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def alignment_grid(panels: list[tuple[str, dict[str, tuple[list[int], list[float]]],
                                      dict[str, tuple[list[int], list[float]]]]], path: Path, title: str) -> Path:
    """One panel per rule: each layer's update angle to backprop's gradient (solid) and, where the rule
    has feedback weights, the angle between feedback and forward weights (dashed), by epoch, mean over
    seeds. ``panels`` = (label, {layer: update-angle curve}, {layer: feedback-angle curve}). One legend
    of the layers, right of the panels."""
    n = len(panels)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.4, 2.8 * rows), squeeze=False)
    colors = plt.get_cmap("viridis")
    handles = {}  # layer -> its line, for the one legend
    for ax, (label, updates, feedback) in zip(axes.flat, panels):
        layers = list(dict.fromkeys([*updates, *feedback]))
        angles = []
        for index, layer in enumerate(layers):
            color = colors(index / max(len(layers) - 1, 1))
            if layer in updates:
                (line,) = ax.plot(*updates[layer], "-", marker="o", ms=2.5, color=color, lw=1.3, label=layer)
                handles.setdefault(layer, line)
                angles += updates[layer][1]
            if layer in feedback:
                ax.plot(*feedback[layer], "--", marker="x", ms=2.5, color=color, lw=1.0)
                angles += feedback[layer][1]
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, max([120.0] + [1.05 * a for a in _finite(angles)]))
        ax.set_title(label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{title}: angle to backprop (degrees); update solid, feedback vs forward weights dashed",
                 fontsize=10)
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 1) if handles else None)
    return _save(fig, path, dpi=100)


def reconstruction_curves(cells: list[tuple[str, str, list[Run]]], path: Path, title: str) -> Path:
    """Figure 6: mean over seeds of the train (dashed) and test (solid) reconstruction error (mean
    squared error per pixel) by epoch, one colour per method. ``cells`` = (method key, label, runs)."""
    fig, ax = plt.subplots(figsize=(9.0, 4.5))
    for method, label, runs in cells:
        color = _color(method)
        epochs, test = mean_curve(runs, "test_reconstruction_error")
        marker = "o" if len(epochs) <= 20 else None  # short runs: the points stay visible
        ax.plot(epochs, test, "-", color=color, label=label, lw=1.6, marker=marker, ms=3)
        e_tr, train = mean_curve(runs, "train_reconstruction_error")
        ax.plot(e_tr, train, "--", color=color, lw=1.1, alpha=0.9, marker=marker, ms=2.5, mfc="none")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("reconstruction error (MSE per pixel)")
    ax.set_title(f"{title} (test solid, train dashed; mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, **LEGEND_OUTSIDE)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def reconstruction_grid(rows: list[tuple[str, "torch.Tensor"]], path: Path, title: str) -> Path:
    """Figure 7: one row of images per entry of ``rows`` = (label, images ``(n, C, H, W)`` on the
    [0, 1] scale), e.g. the test digits, then each method's reconstructions of them."""
    columns = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.1 * columns + 1.2, 1.15 * len(rows) + 0.4),
                             squeeze=False)
    for ax_row, (label, images) in zip(axes, rows):
        for index, ax in enumerate(ax_row):
            ax.set_xticks([]), ax.set_yticks([])
            if index < len(images):
                image = images[index]
                if image.shape[0] == 1:
                    ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(image.permute(1, 2, 0).numpy(), vmin=0, vmax=1)
            else:
                ax.axis("off")
        ax_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=100)
