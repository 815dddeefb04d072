"""The report's Variants section for ``bioprop reproduce --vary`` studies, and its variants.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from test_report_protocol import PAPER, row, write_run

from bioprop.experiments.report import write_report
from bioprop.experiments.reproduce import parse_grid, plan_runs
from bioprop.presets import select_presets

PRESET = "mnist-fc-dtp-parallel"
# (forward_reduction, eps_convention) -> the final test error (= the test error at the best-validation
# epoch) of seeds 0 and 1; None: the seed diverged
ERRORS = {("unit-sum", "pytorch"): (2.4, 2.6), ("unit-sum", "tensorflow"): (2.0, 2.2),
          ("element-mean", "pytorch"): (3.0, None), ("element-mean", "tensorflow"): (1.9, 2.1)}


def study(root: Path) -> None:
    """The runs ``bioprop reproduce mnist-fc-dtp-parallel --seeds 2 --vary ... --vary ...`` plans, done,
    plus the preset's own runs, an unfinished third seed, and folders that are not the study's."""
    grid = parse_grid(["forward_reduction=unit-sum,element-mean", "eps_convention=pytorch,tensorflow"])
    for spec in plan_runs(select_presets([PRESET]), seeds=2, grid=grid):
        test = ERRORS[(spec.variant["forward_reduction"], spec.variant["eps_convention"])][spec.seed]
        diverged = test is None
        write_run(root, spec.folder, PRESET, spec.seed, [5.0, 90.0 if diverged else test], [5.0, 1.0],
                  variant=spec.variant, budget=4 if diverged else None, status="diverged" if diverged else None)
    write_run(root, f"{PRESET}.forward_reduction=unit-sum.eps_convention=tensorflow", PRESET, 2, [5.0, 0.5],
              [5.0, 1.0], variant={"forward_reduction": "unit-sum", "eps_convention": "tensorflow"}, budget=9)
    for seed, test in ((0, 2.3), (1, 2.5)):
        write_run(root, PRESET, PRESET, seed, [5.0, test], [5.0, 1.0])
    write_run(root, f"{PRESET}.protocol=paper", PRESET, 0, [5.0, 1.0], variant=PAPER)
    write_run(root, "mnist-fc-ao-sdtp-parallel.aux-128", "mnist-fc-ao-sdtp-parallel", 0, [5.0, 2.0], [5.0, 1.0],
              variant={"aux_units": 128})


def test_variants_table_one_row_per_folder_best_first(tmp_path):
    root = tmp_path / "runs"
    study(root)
    text = write_report(root).read_text()
    variants = text.split("## Variants")[1].split("\n## ")[0]
    assert f"### `{PRESET}` (mnist FC DTP, parallel)" in variants
    lines = [line for line in variants.splitlines() if line.startswith("| ")]
    assert lines[0] == ("| `forward_reduction` | `eps_convention` | n | test at best val | best test | train (last) "
                        "| test (last) | epochs |")
    assert lines[1:] == [
        "| element-mean | tensorflow | 2 | 2.00 ± 0.14 | 2.00 ± 0.14 | 1.00 ± 0.07 | 2.00 ± 0.14 | 2 |",
        "| unit-sum | tensorflow | 2; 1 unfinished (2/9 epochs), excluded | 2.10 ± 0.14 | 2.10 ± 0.14 "
        "| 1.05 ± 0.07 | 2.10 ± 0.14 | 2 |",
        "| unit-sum (preset's own) | pytorch (preset's own) | 2 | 2.40 ± 0.14 | 2.40 ± 0.14 | 1.20 ± 0.07 "
        "| 2.40 ± 0.14 | 2 |",
        "| unit-sum | pytorch | 2 | 2.50 ± 0.14 | 2.50 ± 0.14 | 1.25 ± 0.07 | 2.50 ± 0.14 | 2 |",
        "| element-mean | pytorch | 1; 1 diverged, excluded | 3.00 | 3.00 | 1.50 | 3.00 | 2 |"]
    assert "aux" not in variants and "protocol" not in variants  # the sweep and the paper's protocol: elsewhere
    assert "[`variants.csv`](variants.csv)" in variants


def test_variants_csv_one_row_per_run(tmp_path):
    root = tmp_path / "runs"
    study(root)
    write_report(root)
    with open(root / "variants.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:8] == ["folder", "preset", "forward_reduction", "eps_convention", "seed", "status",
                                 "epochs", "budget"]
    assert len(rows) == 2 + 4 * 2 + 1  # the preset's own runs, 4 combinations x 2 seeds, the unfinished seed
    by_run = {(r["folder"], r["seed"]): r for r in rows}
    diverged = by_run[(f"{PRESET}.forward_reduction=element-mean.eps_convention=pytorch", "1")]
    assert (diverged["status"], diverged["epochs"], diverged["budget"], diverged["test_error_at_best_val"]) == \
        ("diverged", "2", "4", "90.0")
    unfinished = by_run[(f"{PRESET}.forward_reduction=unit-sum.eps_convention=tensorflow", "2")]
    assert (unfinished["status"], unfinished["eps_convention"]) == ("unfinished", "tensorflow")
    own = by_run[(PRESET, "0")]
    assert (own["status"], own["forward_reduction"], own["best_test_error"]) == ("ok", "", "2.3")


def test_no_variants_no_section(tmp_path):
    root = tmp_path / "runs"
    write_run(root, PRESET, PRESET, 0, [5.0, 2.0], [5.0, 1.0])
    write_run(root, f"{PRESET}.protocol=paper", PRESET, 0, [5.0, 1.0], variant=PAPER)
    text = write_report(root).read_text()
    assert "## Variants" not in text and not (root / "variants.csv").exists()
    assert row(text, "| `mnist-fc-dtp-parallel.protocol=paper` |")


def test_two_studies_of_one_preset_show_every_setting(tmp_path):
    """Two --vary studies of one preset in one folder (one varying an option, one the model, as
    `examples/penultimate_width.py`'s runs do): each row names its own setting of the other key,
    read from its config, and the preset's own row names its model."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, PRESET, PRESET, seed, [5.0, 2.3], [5.0, 1.0])
    write_run(root, f"{PRESET}.forward_reduction=element-mean", PRESET, 0, [5.0, 3.0], [5.0, 1.0],
              variant={"forward_reduction": "element-mean"})
    model = "examples/penultimate_width.py:mnist_fc_penultimate_1024"
    write_run(root, f"{PRESET}.penultimate=1024", PRESET, 0, [5.0, 2.0], [5.0, 1.0], variant={"model": model})
    variants = write_report(root).read_text().split("## Variants")[1].split("\n## ")[0]
    lines = [line for line in variants.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| `forward_reduction` | `model` | n |")
    assert [line.split(" | ")[:3] for line in lines[1:]] == [
        ["| unit-sum", model, "1"],
        ["| unit-sum (preset's own)", "mnist-fc (preset's own)", "2"],
        ["| element-mean", "mnist-fc", "1"]]
