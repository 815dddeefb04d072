"""The report's MNIST autoencoder section (Figs. 6-7) on fake runs, also rebuilt from the exported JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bioprop.experiments.report import write_report
from bioprop.experiments.report_autoencoder import CURVES, GRID, autoencoder_section
from bioprop.experiments.runs import Run, load_runs
from bioprop.presets import get_preset
from bioprop.tasks import decode_images, encode_images


def reconstructions(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(8, 1, 28, 28, generator=generator)
    return {"split": "test", "count": 8, "shape": [1, 28, 28], "input": encode_images(images),
            "output": encode_images(images.flip(-1))}


def fake_run(root: Path, preset: str, seed: int, tests: list[float], samples: bool = True) -> None:
    """A run folder as the trainer writes it for the reconstruction task (no checkpoint)."""
    config = get_preset(preset).config(seed=seed, epochs=len(tests))
    run = root / preset / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    (root / preset / "spec.json").write_text(json.dumps({"preset": preset, "variant": {}}))
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    rows = [{"epoch": epoch, "train_reconstruction_error": test * 0.9, "val_reconstruction_error": test * 1.01,
             "test_reconstruction_error": test, "train_loss": 1.0, "test_loss": 1.0, "seconds": 2.0}
            for epoch, test in enumerate(tests, start=1)]
    if samples:
        rows[-1]["reconstructions"] = reconstructions(seed)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_section_table_curves_and_reconstructions(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "mnist-ae-bp", 0, [0.05, 0.02, 0.010])
    fake_run(root, "mnist-ae-bp", 1, [0.05, 0.03, 0.012])
    fake_run(root, "mnist-ae-sdtp-parallel", 0, [0.06, 0.04, 0.030])
    fake_run(root, "mnist-ae-dtp-parallel", 0, [0.06, 0.03], samples=False)  # unfinished: no images yet
    out = tmp_path / "report"
    out.mkdir()
    lines = autoencoder_section(load_runs(root), out)
    text = "\n".join(lines)
    assert lines[0] == "## MNIST autoencoder (App. 5.5, Figures 6 and 7)"
    rows = [line for line in lines if line.startswith("| ") and "Method" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| DTP, parallel", "| SDTP, parallel", "| BP"]  # Fig. 6 order
    assert "| BP | 2 (0, 1) | 3 | 0.0099 ± 0.0013 | 0.0110 ± 0.0014 |" in text  # last train 0.9 x test; mean ± std
    assert "No reconstructions yet for DTP, parallel" in text
    assert f"]({CURVES})" in text and f"]({GRID})" in text
    assert (out / CURVES).stat().st_size > 1000 and (out / GRID).stat().st_size > 1000


def test_section_is_empty_without_autoencoder_runs(tmp_path):
    run = Run("mnist-fc-bp", "mnist-fc-bp", 0, {}, [{"epoch": 1, "train_error": 1.0, "test_error": 2.0}])
    assert autoencoder_section([run], tmp_path) == []


def test_report_rebuilt_from_the_export_keeps_the_reconstructions(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "mnist-ae-bp", 0, [0.05, 0.02])
    fake_run(root, "mnist-ae-sdtp-parallel", 0, [0.06, 0.04])
    docs = tmp_path / "docs"
    text = write_report(root, docs).read_text()
    assert "## MNIST autoencoder (App. 5.5, Figures 6 and 7)" in text and (docs / GRID).is_file()
    exported = json.loads((docs / "runs" / "mnist-ae-bp" / "seed0.json").read_text())
    record = exported["metrics"][-1]["reconstructions"]
    assert decode_images(record["input"], record["shape"]).shape == (8, 1, 28, 28)
    (docs / GRID).unlink()
    assert "## MNIST autoencoder" in write_report(docs).read_text() and (docs / GRID).is_file()
