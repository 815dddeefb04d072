"""The report against the paper: the paper's-protocol column beside the honest one, seeds that
diverged or have not finished left out of every mean and named, the verdict's spread, the epochs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bioprop.experiments.report import verdict, write_report
from bioprop.presets import get_preset


def write_run(root: Path, folder: str, preset: str, seed: int, tests: list[float], vals: list[float] | None = None,
              variant: dict | None = None, budget: int | None = None, status: str | None = None) -> None:
    """A run folder as the trainer writes it: ``budget`` epochs planned (default: as many as ``tests``),
    ``status`` "diverged" writes results.json as the trainer does; ``vals=None``: no validation split."""
    config = get_preset(preset).config(seed=seed, epochs=budget or len(tests))
    if vals is None:
        config.data.val_size = 0
    run = root / folder / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    (root / folder / "spec.json").write_text(json.dumps({"preset": preset, "variant": variant or {}}))
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    rows = [{"epoch": epoch, "train_error": test / 2, "val_error": None if vals is None else vals[epoch - 1],
             "test_error": test, "seconds": 1.0} for epoch, test in enumerate(tests, start=1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status:
        (run / "results.json").write_text(json.dumps({"status": status}))


def section(text: str, title: str) -> str:
    return text.split(f"### {title}")[1].split("###")[0]


def row(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


PAPER = {"protocol": "paper"}


def test_the_paper_protocol_column_comes_from_the_paper_runs_else_is_marked(tmp_path):
    root = tmp_path / "runs"
    for seed, test in ((0, 1.6), (1, 1.8)):  # honest: best val at epoch 2
        write_run(root, "mnist-fc-bp", "mnist-fc-bp", seed, [3.0, test, 1.5], [3.0, 1.0, 2.0])
    for seed, test in ((0, 1.3), (1, 1.4)):  # all the training data: best test 1.3 / 1.4
        write_run(root, "mnist-fc-bp.protocol=paper", "mnist-fc-bp", seed, [3.0, test], variant=PAPER)
    write_run(root, "mnist-fc-fa", "mnist-fc-fa", 0, [3.0, 2.0], [3.0, 2.5])
    text = write_report(root).read_text()
    verdicts = section(text, "Against the paper")
    assert "ours, honest: test at best val | n | verdict (±0.3 pp) | ours, paper's protocol: best test" in verdicts
    assert row(verdicts, "| FC BP |") == ("| FC BP | 1.48 | 1.70 ± 0.14 | 2 | within ±0.3 (+0.22), boundary within "
                                          "1 std | 1.35 ± 0.07 | 2 | within ±0.3 (-0.13) | 2, 3 | 2, 2 |")
    assert "| 2.00 (honest runs) | 1 | " in row(verdicts, "| FC FA |")  # no paper-protocol run of FA
    best = section(text, "Best test error over training (the paper's protocol)")
    assert "trained on all the training data" in best
    assert "| BP | 1.48 | 1.35 ± 0.07 | -0.13 |" in best and "| FA | 1.85 | 2.00 (honest runs) | +0.15 |" in best
    assert "| BP | 1.48 | 1.70 ± 0.14 | +0.22 |" in section(text, "Test error at best validation epoch")
    assert "`<preset>.protocol=paper`" in section(text, "Against the paper")
    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["preset"], r["protocol"]) for r in rows) == [("mnist-fc-bp", "honest")] * 2 + \
        [("mnist-fc-bp", "paper")] * 2 + [("mnist-fc-fa", "honest")]


def test_paper_protocol_runs_alone_make_the_dataset_section(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "mnist-fc-bp.protocol=paper", "mnist-fc-bp", 0, [3.0, 1.2], variant=PAPER)
    text = write_report(root).read_text()
    assert row(section(text, "Against the paper"), "| FC BP |") == \
        "| FC BP | 1.48 | not run |  |  | 1.20 | 1 | within ±0.3 (-0.28) | 2 | – |"
    assert "| BP | 1.48 | 1.20 | -0.28 |" in section(text, "Best test error over training")


def test_diverged_and_unfinished_seeds_are_left_out_and_named(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [3.0, 1.5], [3.0, 1.0])
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 1, [3.0, 1.7], [3.0, 1.0])
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 2, [3.0, 60.0], [3.0, 1.0], budget=5, status="diverged")
    write_run(root, "mnist-fc-fa", "mnist-fc-fa", 0, [3.0, 2.0], [3.0, 1.0])
    write_run(root, "mnist-fc-fa", "mnist-fc-fa", 1, [3.0, 0.1], [3.0, 1.0], budget=5)  # 2 of 5 epochs
    text = write_report(root).read_text()
    verdicts = section(text, "Against the paper")
    assert "| FC BP | 1.48 | 1.60 ± 0.14 | 2; 1 diverged, excluded | within ±0.3 (+0.12)" in verdicts
    assert "| FC FA | 1.85 | 2.00 | 1; 1 unfinished (2/5 epochs), excluded | within ±0.3 (+0.15) |" in verdicts
    honest = section(text, "Test error at best validation epoch")
    assert "| BP | 1.48 | 1.60 ± 0.14 (n=2; 1 diverged, excluded) | +0.12 |" in honest
    assert "| FA | 1.85 | 2.00 (n=1; 1 unfinished (2/5 epochs), excluded) | +0.15 |" in honest
    train = section(text, "Train error")
    assert "0.80 ± 0.07 (n=2; 1 diverged, excluded)" in train  # train error = test / 2 in these rows
    assert "| `mnist-fc-bp` | 0, 1, 2 (diverged, excluded) |" in text


def test_verdict_says_when_the_boundary_is_within_one_std():
    assert verdict(1.35, 1.48, 0.21) == "within ±0.3 (-0.13), boundary within 1 std"  # 1.18 in [1.14, 1.56]
    assert verdict(1.35, 1.48, 0.05) == "within ±0.3 (-0.13)"
    assert verdict(1.35, 1.48) == "within ±0.3 (-0.13)"  # one seed: no spread
    assert verdict(1.10, 1.48, 0.10) == "better (-0.38), boundary within 1 std"
    assert verdict(2.00, 1.48, 0.10) == "**worse by 0.52**"
    assert verdict(1.85, 1.48, 0.10) == "**worse by 0.37**, boundary within 1 std"


def test_epochs_run_sorts_as_numbers(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [3.0] * 19 + [1.5], [3.0] * 19 + [1.0])  # 20 epochs
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 1, [3.0] * 99 + [1.6], [3.0] * 99 + [1.0])  # 100 epochs
    text = write_report(root).read_text()
    assert row(section(text, "Against the paper"), "| FC BP |").endswith("| 20, 100 | 20, 100 |")


def test_epochs_run_shows_the_seeds_counted_not_an_unfinished_one(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [3.0] * 9 + [1.5], [3.0] * 9 + [1.0])  # 10 of 10
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 1, [3.0, 2.0, 1.6], [3.0, 2.0, 1.0], budget=10)  # 3 of 10
    against = row(section(write_report(root).read_text(), "Against the paper"), "| FC BP |")
    assert "1; 1 unfinished (3/10 epochs), excluded" in against and against.endswith("| 10 | 10 |")


def test_the_other_seed_averages_leave_out_the_same_seeds(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "mnist-fc-kp", "mnist-fc-kp", 0, [5.0, 3.0], [5.0, 2.0])
    write_run(root, "mnist-fc-kp", "mnist-fc-kp", 1, [5.0, 80.0], [5.0, 2.0], budget=3, status="diverged")
    for size, seed, test in ((512, 0, 45.0), (128, 0, 50.0), (128, 1, 20.0)):
        folder = "cifar-fc-ao-sdtp-parallel" + ("" if size == 512 else f".aux-{size}")
        write_run(root, folder, "cifar-fc-ao-sdtp-parallel", seed, [60.0, test], [60.0, test],
                  variant=None if size == 512 else {"aux_units": size}, budget=4 if seed else None)
    text = write_report(root).read_text()
    beyond = section(text, "Every rule, the paper's and those beyond it")
    assert "| FC | KP | 0.000168 | 3.00 | 3.00 | 1.50 | 1; 1 diverged, excluded | 2 |" in beyond
    assert "| FC AO-SDTP, parallel | 128 | 50.00 (1 unfinished (2/4 epochs), excluded) |" in text


def test_read_at_an_epoch_compares_runs_of_different_lengths_at_one_budget(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [3.0, 2.0, 1.5, 0.5], [3.0, 2.0, 1.0, 0.5])  # 4 epochs
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 1, [3.0, 2.4, 1.6], [3.0, 2.0, 1.8], budget=6)  # 3 of 6
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 2, [3.0], [3.0], budget=6)  # 1 of 6
    write_run(root, "mnist-fc-fa", "mnist-fc-fa", 0, [4.0, 3.0, 2.5], [4.0, 3.0, 2.0], status="diverged")  # in epoch 4
    write_run(root, "mnist-fc-dfa", "mnist-fc-dfa", 0, [4.0, 3.5], [4.0, 3.0], budget=5, status="diverged")  # in 3
    text = write_report(root, tmp_path / "report", epochs=3).read_text()
    against = section(text, "Against the paper")
    # seeds 0 and 1 at epoch 3 (seed 0's fourth epoch ignored: its 0.5 would win), seed 2 unfinished
    assert row(against, "| FC BP |").startswith("| FC BP | 1.48 | 1.55 ± 0.07 | 2; 1 unfinished (1/3 epochs), excluded |")
    assert row(against, "| FC FA |").startswith("| FC FA | 1.85 | 2.50 | 1 |")  # diverged after epoch 3: fine there
    assert "1 diverged, excluded" in row(against, "| FC DFA |")  # diverged before it
    assert "every run read at epoch 3 (`bioprop report --epochs 3`)" in text.split("## Budget")[1]
    assert "--epochs 3" in text.split("## Commands")[1]
    exported = json.loads((tmp_path / "report" / "runs" / "mnist-fc-bp" / "seed0.json").read_text())
    assert len(exported["metrics"]) == 4  # exported whole


def test_without_an_epoch_the_runs_own_budgets_decide(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [3.0, 2.0, 1.5, 0.5], [3.0, 2.0, 1.0, 0.5])
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 1, [3.0, 2.4, 1.6], [3.0, 2.0, 1.8], budget=6)
    against = section(write_report(root).read_text(), "Against the paper")
    assert row(against, "| FC BP |").startswith("| FC BP | 1.48 | 0.50 | 1; 1 unfinished (3/6 epochs), excluded |")


def test_a_rebuild_from_the_export_reads_at_the_kept_epoch_with_the_kept_title_and_note(tmp_path):
    """`bioprop report docs/results/X` rebuilds the report X was: --epochs, --title and --note are
    kept with it (the export holds every epoch, so without the kept epoch the rebuild would differ)."""
    root, docs = tmp_path / "runs", tmp_path / "docs"
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [3.0, 2.0, 1.5, 0.5], [3.0, 2.0, 1.0, 0.5])
    first = write_report(root, docs, epochs=3, title="At three epochs", note="Why three.").read_text()
    rebuilt = write_report(docs).read_text()
    for text in (first, rebuilt):
        assert text.startswith("# At three epochs\n") and "Why three." in text
        assert row(section(text, "Against the paper"), "| FC BP |").startswith("| FC BP | 1.48 | 1.50 | 1 |")
    assert row(section(write_report(docs, epochs=4).read_text(), "Against the paper"),
               "| FC BP |").startswith("| FC BP | 1.48 | 0.50 | 1 |")  # one given overrides the kept one


def test_a_live_runs_folder_does_not_keep_the_epoch(tmp_path):
    """Reported in place with --epochs, a runs folder still reports at the runs' own budgets next
    time (the report `reproduce` writes after extending the runs must not stay at the old epoch)."""
    root = tmp_path / "runs"
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [3.0, 2.0, 1.5, 0.5], [3.0, 2.0, 1.0, 0.5])
    assert "| FC BP | 1.48 | 1.50 | 1 |" in write_report(root, epochs=3).read_text()
    assert "| FC BP | 1.48 | 0.50 | 1 |" in write_report(root).read_text()


def test_a_crash_while_writing_a_report_leaves_the_previous_files_whole(tmp_path, monkeypatch):
    """report.md, results.csv and the PNGs are written atomically: a write that fails midway (a full
    disk, an interrupt) leaves the previous file, not a truncated one, and no temporary file."""
    import os

    root, docs = tmp_path / "runs", tmp_path / "docs"
    write_run(root, "mnist-fc-bp", "mnist-fc-bp", 0, [3.0, 2.0], [3.0, 2.0])
    write_report(root, docs)
    names = ["report.md", "results.csv", next(p.name for p in docs.iterdir() if p.suffix == ".png")]
    real_replace = os.replace
    for name in names:
        before = (docs / name).read_bytes()

        def full_disk(source, destination, name=name):
            if os.path.basename(destination) == name:
                raise OSError(28, "No space left on device")
            real_replace(source, destination)

        monkeypatch.setattr(os, "replace", full_disk)
        with pytest.raises(Exception, match="No space left"):
            write_report(root, docs, title="Another title")
        assert (docs / name).read_bytes() == before
        assert not [p for p in docs.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(os, "replace", real_replace)
    assert write_report(root, docs).read_text().startswith("# Another title")  # the kept title, now written
