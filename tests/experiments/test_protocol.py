"""``bioprop reproduce --protocol honest|paper|both``: the plan (folders, val_size 0), the refusals,
the command line the report records, the dry run, and one tiny real run under each protocol."""

from __future__ import annotations

import json

import pytest

from bioprop.cli import build_parser, main
from bioprop.cli.reproduce import canonical_command
from bioprop.errors import BiopropError
from bioprop.experiments.reproduce import apply_variant, parse_grid, plan_runs
from bioprop.presets import get_preset, select_presets

TWO = ["mnist-fc-bp", "mnist-fc-dfa"]


def folders(specs) -> dict[tuple[str, int], object]:
    return {(spec.folder, spec.seed): spec for spec in specs}


def test_honest_is_the_default_and_plans_the_plain_runs():
    specs = plan_runs(select_presets(TWO), seeds=2)
    assert set(folders(specs)) == {(p, s) for p in TWO for s in (0, 1)}
    assert {spec.config.data.val_size for spec in specs} == {10000} and all(s.variant == {} for s in specs)


def test_paper_trains_on_all_the_training_data_in_its_own_folders():
    specs = plan_runs(select_presets(TWO), seeds=2, protocol="paper")
    assert set(folders(specs)) == {(f"{p}.protocol=paper", s) for p in TWO for s in (0, 1)}
    assert {spec.config.data.val_size for spec in specs} == {0}
    assert all(spec.variant == {"protocol": "paper"} and spec.preset in TWO for spec in specs)


def test_both_plans_the_honest_and_the_paper_run_of_every_preset_and_seed():
    planned = folders(plan_runs(select_presets(TWO), seeds=2, protocol="both"))
    assert len(planned) == 8
    for preset in TWO:
        for seed in (0, 1):
            assert planned[(preset, seed)].config.data.val_size == 10000
            assert planned[(f"{preset}.protocol=paper", seed)].config.data.val_size == 0
    assert [spec.seed for spec in planned.values()][:4] == [0] * 4  # still seed-major


def test_paper_protocol_combines_with_vary_and_the_aux_sweep():
    grid = parse_grid(["forward_reduction=unit-sum,element-mean"])
    planned = folders(plan_runs(select_presets(["mnist-fc-dtp-parallel"]), seeds=1, grid=grid, protocol="paper"))
    spec = planned[("mnist-fc-dtp-parallel.forward_reduction=element-mean.protocol=paper", 0)]
    assert spec.config.rule_options["forward_reduction"] == "element-mean" and spec.config.data.val_size == 0
    assert len(planned) == 2
    sweep = folders(plan_runs(select_presets(["cifar-fc-ao-sdtp-parallel"]), seeds=1, aux_sweep=[128],
                              protocol="paper"))
    assert set(sweep) == {("cifar-fc-ao-sdtp-parallel.protocol=paper", 0),
                          ("cifar-fc-ao-sdtp-parallel.aux-128.protocol=paper", 0)}
    assert sweep[("cifar-fc-ao-sdtp-parallel.aux-128.protocol=paper", 0)].config.rule_options["aux_units"] == 128


def test_bad_protocols_are_refused_by_name():
    presets = select_presets(["mnist-fc-bp"])
    with pytest.raises(BiopropError, match="--protocol 'exam'"):
        plan_runs(presets, seeds=1, protocol="exam")
    config = get_preset("mnist-fc-bp").config()
    with pytest.raises(BiopropError, match="protocol 'exam': expected honest or paper"):
        apply_variant(config, {"protocol": "exam"})
    apply_variant(config, {"protocol": "honest"})
    assert config.data.val_size == 10000
    with pytest.raises(BiopropError, match="use --protocol"):
        plan_runs(presets, seeds=1, grid={"protocol": ["honest", "paper"]})
    with pytest.raises(BiopropError, match="val_size 0"):
        plan_runs(presets, seeds=1, grid={"val_size": [5000]}, protocol="both")


def test_the_cli_records_the_protocol_and_the_dry_run_shows_it(tmp_path, capsys):
    args = build_parser().parse_args(["reproduce", "mnist-fc-bp", "--protocol", "both", "--out", str(tmp_path)])
    assert canonical_command(args)[-4:] == ["--protocol", "both", "--out", str(tmp_path)]
    plain = build_parser().parse_args(["reproduce", "mnist-fc-bp", "--out", str(tmp_path)])
    assert "--protocol" not in canonical_command(plain)
    assert main(["reproduce", "mnist-fc-bp", "--seeds", "1", "--epochs", "2", "--protocol", "both",
                 "--out", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("protocol: both")
    assert lines[1].startswith("mnist-fc-bp seed0 ") and lines[1].endswith("val_size 10000")
    assert lines[2].startswith("mnist-fc-bp.protocol=paper seed0 ") and lines[2].endswith("val_size 0")
    assert main(["reproduce", "mnist-fc-bp", "--protocol", "exam", "--out", str(tmp_path)]) == 2
    assert "invalid choice: 'exam'" in capsys.readouterr().err


def test_both_protocols_end_to_end_on_real_mnist(mnist_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["reproduce", "mnist-fc-bp", "--seeds", "1", "--epochs", "1", "--limit-batches", "2",
                 "--limit-eval-batches", "1", "--protocol", "both", "--data-dir", str(mnist_dir),
                 "--out", str(out), "--no-progress"]) == 0
    paper = out / "mnist-fc-bp.protocol=paper"
    assert json.loads((paper / "spec.json").read_text()) == {"preset": "mnist-fc-bp", "variant": {"protocol": "paper"}}
    assert json.loads((paper / "seed0" / "config.json").read_text())["data"]["val_size"] == 0
    row = json.loads((paper / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert row.get("val_error") is None and row["test_error"] > 0
    report = (out / "report.md").read_text()
    verdicts = report.split("### Against the paper")[1].split("###")[0]
    line = next(line for line in verdicts.splitlines() if line.startswith("| FC BP |"))
    assert f"| {row['test_error']:.2f} | 1 |" in line and "(honest runs)" not in line
    assert "--protocol both" in report
