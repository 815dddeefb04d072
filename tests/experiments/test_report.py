"""``bioprop report`` on synthetic runs: the tables, the deltas, the figures, the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bioprop.cli import main
from bioprop.errors import BiopropError
from bioprop.experiments.report import write_report
from bioprop.experiments.runs import load_runs
from bioprop.presets import get_preset


def fake_run(root: Path, folder: str, preset: str, seed: int, tests: list[float], vals: list[float],
             variant: dict | None = None, top5: bool = False) -> None:
    """A run folder as the trainer writes it (no checkpoint needed by the report)."""
    config = get_preset(preset).config(seed=seed, epochs=len(tests))
    if variant:
        config.rule_options.update(variant)
    run = root / folder / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    (root / folder / "spec.json").write_text(json.dumps({"preset": preset, "variant": variant or {}}))
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    rows = []
    for epoch, (test, val) in enumerate(zip(tests, vals), start=1):
        row = {"epoch": epoch, "train_error": test / 2, "val_error": val, "test_error": test, "seconds": 1.5}
        if top5:
            row.update(val_top5_error=val / 2, test_top5_error=test / 2)
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_tables_deltas_and_figures(tmp_path):
    root = tmp_path / "runs"
    # best val at epoch 2 (test 2.0 / 3.0), best test at epoch 3 (1.0 / 2.0)
    fake_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [5.0, 2.0, 1.0], [5.0, 1.0, 3.0])
    fake_run(root, "mnist-fc-bp", "mnist-fc-bp", 1, [5.0, 3.0, 2.0], [5.0, 1.0, 3.0])
    fake_run(root, "mnist-lc-dtp-parallel", "mnist-lc-dtp-parallel", 0, [4.0, 3.0], [4.0, 3.0])
    (root / "reproduce.json").write_text(json.dumps({"commands": ["bioprop reproduce mnist --seeds 2"]}))
    path = write_report(root)
    text = path.read_text()
    honest = text.split("### Test error at best validation epoch")[1].split("###")[0]
    best = text.split("### Best test error over training")[1].split("###")[0]
    assert "| BP | 1.48 | 2.50 ± 0.71 | +1.02 |" in honest  # mean of 2.0 and 3.0, sample std
    assert "| BP | 1.48 | 1.50 ± 0.71 (honest runs) | +0.02 |" in best  # no run under the paper's protocol
    assert "| DTP, parallel | 2.86 | not run | – | 1.52 | 3.00 | +1.48 |" in honest
    assert "| BP ConvNet |  |  |  | 1.01 | not run | – |" in honest
    assert "bioprop reproduce mnist --seeds 2" in text and f"bioprop report {root}" in text
    assert "`mnist-fc`: 3 epochs" in text
    for png in ("curves-mnist-fc.png", "cells-mnist-fc.png", "curves-mnist-lc.png"):
        assert f"]({png})" in text and (root / png).stat().st_size > 1000
    assert (root / "results.csv").read_text().count("mnist-fc-bp") == 2


def test_report_out_exports_compact_runs_and_rebuilds_from_them(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "fashion-mnist-fc-bp", "fashion-mnist-fc-bp", 0, [12.0, 11.0], [12.0, 11.5])
    (root / "fashion-mnist-fc-bp" / "seed0" / "checkpoint.pt").write_bytes(b"x" * 100)
    docs = tmp_path / "docs" / "fashion"
    write_report(root, docs)
    assert not list(docs.rglob("*.pt"))
    assert json.loads((docs / "runs" / "fashion-mnist-fc-bp" / "seed0.json").read_text())["metrics"][1]["test_error"] == 11.0
    text = (docs / "report.md").read_text()
    assert "Fashion-MNIST" in text and "FC published" in text
    assert "| BP | 10.42 | 11.00 | +0.58 |" in text  # Kao & Hariharan's 6x256 tanh MLP
    # the exported folder alone is enough to rebuild the report
    rebuilt = write_report(docs)
    assert "| BP | 10.42 | 11.00 | +0.58 |" in rebuilt.read_text()
    assert len(load_runs(docs)) == 1


def test_report_aux_sweep_and_imagenet(tmp_path):
    root = tmp_path / "runs"
    for size, error in ((128, 50.0), (512, 45.0), (1024, 44.0)):
        folder = "cifar-fc-ao-sdtp-parallel" + ("" if size == 512 else f".aux-{size}")
        fake_run(root, folder, "cifar-fc-ao-sdtp-parallel", 0, [error + 5, error], [error + 5, error],
                 variant=None if size == 512 else {"aux_units": size})
    fake_run(root, "imagenet-lc-bp", "imagenet-lc-bp", 0, [90.0, 80.0], [91.0, 81.0], top5=True)
    text = write_report(root).read_text()
    assert "![aux sweep](aux-sweep-cifar10.png)" in text and (root / "aux-sweep-cifar10.png").exists()
    assert "| FC AO-SDTP, parallel | 1024 | 44.00 |" in text
    assert "| BP | 71.43 | 80.00 | +8.57 | 80.00 (honest runs) | +8.57 | 49.07 | 40.00 | 40.00 (honest runs) |" in text
    assert (root / "curves-imagenet-lc.png").exists()


def test_report_bad_input(tmp_path, capsys):
    with pytest.raises(BiopropError, match="not a folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no runs" in capsys.readouterr().err


def test_report_puts_rules_beyond_the_paper_beside_the_paper_and_plots_alignment(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [5.0, 2.0], [5.0, 1.0])
    fake_run(root, "mnist-fc-kp", "mnist-fc-kp", 0, [6.0, 3.0], [6.0, 2.0])
    fake_run(root, "mnist-fc-ep", "mnist-fc-ep", 0, [9.0, 7.0], [9.0, 6.0])
    metrics = root / "mnist-fc-kp" / "seed0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    for row, angle in zip(rows, (80.0, 40.0)):
        row["diagnostics"] = {"update_angle/layer1": angle, "update_angle/layer2": 0.0,
                              "feedback_angle/layer2": angle + 5}
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(root).read_text()
    section = text.split("### Every rule, the paper's and those beyond it")[1].split("###")[0]
    # the forward learning rate each rule's runs used: BP's and FA's Table 5 values (KP borrows FA's column)
    assert "| FC | BP (paper) | 0.000152 | 2.00 |" in section
    assert "| FC | KP | 0.000168 | 3.00 | 3.00 |" in section and "| 40/0 |" in section  # last epoch's angles by layer
    assert "| FC | EP | 0.0003 | 7.00 |" in section  # its preset's own searched rate
    assert (root / "alignment-mnist-fc.png").stat().st_size > 1000
    assert (root / "curves-mnist-fc-every-rule.png").is_file()
    paper_table = text.split("### Against the paper")[1].split("###")[0]
    assert "KP" not in paper_table  # the paper's tables hold the paper's cells only
