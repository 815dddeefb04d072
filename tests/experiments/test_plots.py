"""The report's figures keep every curve on the chart and their legends off the lines: a rule at
90 % error beside rules near 2 % is drawn (or, on fixed axes, named), and legends lie outside the
axes (matplotlib, Agg)."""

from __future__ import annotations

import pytest
from test_report import fake_run

from bioprop.experiments import plots
from bioprop.experiments.report import write_report

LOW = {"mnist-fc-bp": [5.0, 2.0, 1.5], "mnist-fc-fa": [5.0, 2.5, 2.0], "mnist-fc-dfa": [5.0, 3.0, 2.5]}
HIGH = {"mnist-fc-dtp-parallel": [90.0, 89.5, 89.0], "mnist-fc-kp": [91.0, 90.5, 90.0]}  # stuck near chance


@pytest.fixture
def figures(monkeypatch):
    """Each figure the report saves, by file name: its axes' y limits, legend texts and whether each
    legend lies outside every axes (in display coordinates, after drawing) and inside the figure."""
    seen = {}
    save = plots._save

    def record(fig, path, dpi):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
        boxes = [ax.get_window_extent(renderer) for ax in axes]
        legends = [ax.get_legend() for ax in axes if ax.get_legend()] + list(fig.legends)
        seen[path.name] = {
            "ylims": [ax.get_ylim() for ax in axes],
            "labels": [text.get_text() for legend in legends for text in legend.get_texts()],
            "titles": [ax.get_title() for ax in axes],
            "outside": [not any(legend.get_window_extent(renderer).overlaps(box) for box in boxes)
                        for legend in legends],
            "in_figure": [fig.bbox.contains(*legend.get_window_extent(renderer).p0)
                          and fig.bbox.contains(*legend.get_window_extent(renderer).p1) for legend in legends]}
        return save(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", record)
    return seen


def report_with_a_rule_at_90_percent(tmp_path):
    root = tmp_path / "runs"
    for preset, tests in {**LOW, **HIGH}.items():
        fake_run(root, preset, preset, 0, tests, tests)  # train error: half the test error
    write_report(root)
    return root


def test_every_curve_is_within_the_axes_and_the_legend_outside_them(tmp_path, figures):
    report_with_a_rule_at_90_percent(tmp_path)
    for name in ("curves-mnist-fc.png", "curves-mnist-fc-every-rule.png"):
        figure = figures[name]
        (low, high), = figure["ylims"]
        assert low <= 0.75 and high >= 91.0, (name, figure["ylims"])  # the lowest train and highest test error
        assert figure["outside"] == [True] and figure["in_figure"] == [True], name
    assert "KP" in figures["curves-mnist-fc-every-rule.png"]["labels"]
    panels = figures["cells-mnist-fc.png"]["ylims"]  # every seed of each paper cell: BP, FA, DFA, DTP
    assert len(panels) == 4 and max(high for _, high in panels) >= 90.0 and all(low == 0 for low, _ in panels)


def test_fixed_axes_name_the_curves_they_leave_out(tmp_path, figures):
    report_with_a_rule_at_90_percent(tmp_path)
    figure = figures["curves-mnist-fc-fig8-axes.png"]
    assert figure["ylims"] == [(0.0, 5.0)]
    assert "DTP, parallel (off the axes: lowest 89.0 %)" in figure["labels"] and "BP" in figure["labels"]
    assert "clipped at 5 %" in figure["titles"][0]
    assert figure["outside"] == [True]


@pytest.mark.parametrize("values, scale, top", [
    ([1.0, 2.0, 4.5], "linear", 5.0),       # within a decade: linear, at least the floor
    ([0.0, 3.0, 8.0], "linear", 8.64),      # 0 % counts as 1 %: still one decade
    ([0.4, 2.0, 90.0], "symlog", 105.0),    # near chance beside near zero: logarithmic above 1 %
    ([], "linear", 100.0),
])
def test_error_axis_spans_every_value(values, scale, top):
    fig, ax = plots.plt.subplots()
    plots.fit_error_axis(ax, values, floor=5.0)
    assert ax.get_yscale() == scale and ax.get_ylim() == pytest.approx((0.0, top))
    plots.plt.close(fig)
