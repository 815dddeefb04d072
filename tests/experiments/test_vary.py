"""``bioprop reproduce --vary KEY=V1,V2``: every combination of the values, applied where they belong
(rule options, Adam settings of every group or of one, the validation split), with clear errors."""

import pytest

from bioprop.errors import BiopropError
from bioprop.experiments.reproduce import parse_grid, plan_runs, variant_folder
from bioprop.presets import select_presets


def test_parse_grid_types_and_errors():
    grid = parse_grid(["forward_reduction=unit-sum,element-mean", "inverse.lr=1e-4,3e-4", "val_size=0"])
    assert grid == {"forward_reduction": ["unit-sum", "element-mean"], "inverse.lr": [1e-4, 3e-4], "val_size": [0]}
    for bad in ("forward_reduction", "=1,2", "alpha="):
        with pytest.raises(BiopropError, match="KEY=V1,V2"):
            parse_grid([bad])
    with pytest.raises(BiopropError, match="given twice"):
        parse_grid(["alpha=0.1", "alpha=0.2"])


def test_grid_is_the_product_of_the_keys_each_rule_has():
    presets = select_presets(["mnist-fc-dtp-parallel", "mnist-fc-sdtp-alternating"])
    grid = parse_grid(["target_reduction=sum,mean", "forward_reduction=unit-sum,element-mean",
                       "eps_convention=pytorch,tensorflow"])
    specs = plan_runs(presets, seeds=2, epochs=None, grid=grid)
    by_preset = {}
    for spec in specs:
        by_preset.setdefault(spec.preset, set()).add(spec.folder)
    assert len(by_preset["mnist-fc-dtp-parallel"]) == 8  # target_reduction is DTP's only
    assert len(by_preset["mnist-fc-sdtp-alternating"]) == 4
    assert len(specs) == 2 * 12
    assert [s.seed for s in specs[:12]] == [0] * 12  # seed-major, as the plain plan
    spec = next(s for s in specs if s.folder == "mnist-fc-sdtp-alternating.forward_reduction=element-mean"
                ".eps_convention=tensorflow")
    assert spec.config.rule_options["forward_reduction"] == "element-mean"
    assert spec.config.rule_options["schedule"] == "alternating"  # the preset's own options stay
    assert {g: a.eps_convention for g, a in spec.config.optimizers.items()} == \
        {"forward": "tensorflow", "inverse": "tensorflow"}
    assert spec.config.optimizers["inverse"].lr == pytest.approx(9.572e-3)  # Table 5 kept
    assert variant_folder("p", {"a": 1, "b": "x"}) == "p.a=1.b=x"


def test_one_group_a_validation_split_and_errors():
    presets = select_presets(["mnist-fc-dtp-parallel"])
    specs = plan_runs(presets, seeds=1, grid=parse_grid(["inverse.beta1=0.9,0.99", "val_size=0"]))
    betas = {s.folder: (s.config.optimizers["forward"].beta1, s.config.optimizers["inverse"].beta1,
                        s.config.data.val_size) for s in specs}
    assert betas == {"mnist-fc-dtp-parallel.inverse.beta1=0.9.val_size=0": (0.99, 0.9, 0),
                     "mnist-fc-dtp-parallel.inverse.beta1=0.99.val_size=0": (0.99, 0.99, 0)}
    with pytest.raises(BiopropError, match="--vary aux_units: not an option of any selected rule"):
        plan_runs(presets, seeds=1, grid={"aux_units": [0]})
    with pytest.raises(BiopropError, match="feedback.lr"):
        plan_runs(presets, seeds=1, grid={"feedback.lr": [1e-3]})
    with pytest.raises(BiopropError, match="mnist-fc-dtp-parallel.forward_reduction=sum: .*forward_reduction"):
        plan_runs(presets, seeds=1, grid={"forward_reduction": ["sum"]})


def test_a_preset_without_any_varied_key_runs_as_itself():
    presets = select_presets(["mnist-fc-bp", "mnist-fc-sdtp-parallel"])
    specs = plan_runs(presets, seeds=1, grid={"noise": [0.1, 0.2]})
    assert sorted(s.folder for s in specs) == ["mnist-fc-bp", "mnist-fc-sdtp-parallel.noise=0.1",
                                               "mnist-fc-sdtp-parallel.noise=0.2"]


def test_cli_dry_run_lists_the_variants_and_bad_keys_exit_2(tmp_path, capsys):
    from bioprop.cli import main

    argv = ["reproduce", "mnist-fc-sdtp-parallel", "--seeds", "1", "--epochs", "2", "--out", str(tmp_path / "runs"),
            "--vary", "inverse_reduction=unit-sum,element-mean", "--dry-run"]
    assert main(argv) == 0
    listed = capsys.readouterr().out
    assert "mnist-fc-sdtp-parallel.inverse_reduction=element-mean seed0" in listed
    assert "mnist-fc-sdtp-parallel.inverse_reduction=unit-sum seed0" in listed
    assert main(argv[:-3] + ["--vary", "alpha=0.1", "--dry-run"]) == 2
    assert "--vary alpha: not an option of any selected rule" in capsys.readouterr().err


def test_reproduce_train_eval_size_reaches_every_run(tmp_path):
    from bioprop.cli.reproduce import canonical_command
    from bioprop.cli import parse_args

    args = parse_args(["reproduce", "mnist-lc-bp", "mnist-lc-fa", "--seeds", "1", "--train-eval-size", "10000",
                       "--out", str(tmp_path)])
    argv = canonical_command(args)
    assert argv[argv.index("--train-eval-size") + 1] == "10000"  # in the report's command
    specs = plan_runs(select_presets(["mnist-lc-bp", "mnist-lc-fa"]), seeds=1, train_eval_size=10000)
    assert {s.config.train_eval_size for s in specs} == {10000}
