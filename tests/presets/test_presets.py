"""Every preset builds a valid config for the right network, dataset, rule and Table 5 settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bioprop.cli import main
from bioprop.data import dataset_info
from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.presets import DECISIONS, PRESETS, get_preset, list_presets, select_presets
from bioprop.presets import paper
from bioprop.rules import RULES
from bioprop.tasks import task_of


@pytest.mark.parametrize("name", PRESETS.names())
def test_preset_builds_a_valid_config(name):
    preset = get_preset(name)
    config = preset.config()
    config.validate()
    config.data.validate()
    with torch.device("meta"):
        model = create_model(config.model)
    info = dataset_info(config.data.name)
    assert tuple(model.input_shape) == tuple(info.input_shape)
    assert model.output_units == task_of(model).output_units(info.input_shape, info.num_classes)
    assert model.num_classes == (info.num_classes if task_of(model).name == "classification" else None)
    assert config.rule in RULES, f"rule {config.rule!r} is not registered"
    accepted = {f.name for f in dataclasses.fields(RULES.get(config.rule).Options)}
    assert set(config.rule_options) <= accepted
    # the Table 5 settings go to the groups the rule has (the inverse column to an "inverse" group);
    # groups without settings here follow another group or take Adam's defaults
    groups = {"forward", "inverse"} & set(RULES.get(config.rule).groups)
    assert set(config.optimizers) == groups
    assert config.epochs == paper.EPOCHS and config.batch_size == paper.BATCH_SIZE
    # the paper's numbers are there (Fashion-MNIST has no paper column)
    if preset.cell.table in ("1a", "1b"):
        assert preset.paper.test_error is not None and preset.paper.train_error is not None
    elif preset.cell.table == "2":
        assert preset.paper.test_error is not None and preset.paper.test_top5_error is not None
    else:
        assert preset.cell.table in ("fashion", "beyond", "autoencoder") and preset.paper.test_error is None
    # the TrainConfig round-trips through JSON-able dicts
    assert type(config).from_dict(config.to_dict()) == config


def test_every_table_cell_has_a_preset():
    assert len(select_presets(["mnist"])) == 19
    assert len(select_presets(["cifar10"])) == 19
    assert len(select_presets(["imagenet"])) == 6
    assert len(select_presets(["fashion-mnist"])) == 19
    for name in ("mnist-fc-dtp-alternating", "cifar-lc-bp-conv", "imagenet-lc-fa", "mnist-lc-ao-sdtp-parallel",
                 "fashion-mnist-fc-bp"):
        assert name in PRESETS
    assert "mnist-fc-bp-conv" not in PRESETS  # BP ConvNet is an LC-column row only
    assert "imagenet-lc-dfa" not in PRESETS and "imagenet-lc-sdtp-alternating" not in PRESETS


def test_table_values_reach_the_config():
    config = get_preset("mnist-fc-dtp-alternating").config()
    assert config.rule == "dtp" and config.model == "mnist-fc"
    assert config.rule_options == {"schedule": "alternating", "alpha": 0.232, "noise": 0.220, **paper.TP_CONVENTIONS}
    forward, inverse = config.optimizers["forward"], config.optimizers["inverse"]
    assert (forward.lr, forward.beta1, forward.beta2, forward.eps) == (3.08e-4, 0.99, 0.99, 1e-4)
    # inverse beta1: Table 5 says .99, the preset uses Table 4's fixed 0.9 (reference section 7)
    assert (inverse.lr, inverse.beta1, inverse.beta2, inverse.eps) == (4.593e-3, 0.9, 0.999, 1e-4)
    assert paper.TABLE5["mnist-fc"]["dtp-alternating"].inverse.beta1 == 0.99

    bp_conv = get_preset("cifar-lc-bp-conv")
    assert bp_conv.model == "cifar-conv" and bp_conv.rule == "bp"
    assert bp_conv.paper.test_error == 31.87 and bp_conv.paper.train_error == 1.39
    assert get_preset("imagenet-lc-bp").paper.test_top5_error == 49.07
    assert get_preset("cifar-fc-dtp-alternating").config().data.augment is True
    assert get_preset("mnist-fc-bp").config().data.augment is False


def test_ao_sdtp_borrows_the_sdtp_column_of_its_schedule():
    for arch in ("fc", "lc"):
        for schedule in ("parallel", "alternating"):
            ao = get_preset(f"cifar-{arch}-ao-sdtp-{schedule}").config()
            sdtp = get_preset(f"cifar-{arch}-sdtp-{schedule}").config()
            assert ao.rule == "ao-sdtp" and ao.rule_options["aux_units"] == paper.AUX_UNITS
            assert ao.optimizers == sdtp.optimizers
            assert ao.rule_options["noise"] == sdtp.rule_options["noise"]
            assert ao.rule_options["schedule"] == schedule


def test_fashion_presets_are_the_mnist_cells_on_fashion_mnist():
    for preset in select_presets(["fashion-mnist"]):
        twin = get_preset(preset.name.replace("fashion-mnist", "mnist"))
        config, twin_config = preset.config(), twin.config()
        assert config.data.name == "fashion-mnist"
        twin_config.data.name = "fashion-mnist"
        assert config == twin_config
    assert get_preset("fashion-mnist-fc-bp").cell.published.test_error == 10.42


def test_config_is_a_fresh_copy_with_overrides():
    preset = get_preset("mnist-lc-fa")
    config = preset.config(epochs=3, seed=7)
    assert (config.epochs, config.seed) == (3, 7)
    config.optimizers["forward"].lr = 1.0
    config.data.val_size = 1
    assert preset.config().optimizers["forward"].lr == 2.19e-4
    assert preset.config().data.val_size == 10000
    with pytest.raises(BiopropError, match="no field"):
        preset.config(epoch=3)


def test_selection_and_unknown_names():
    from bioprop.presets import beyond

    names = [p.name for p in select_presets(["mnist-lc-*", "mnist-fc-bp"])]
    assert names[0] == "mnist-fc-bp" and len(names) == 11 + len(beyond.rules_beyond())  # globs match every rule
    assert [p.name for p in list_presets("imagenet")][0] == "imagenet-lc-dtp-parallel"
    with pytest.raises(BiopropError, match="unknown preset or group 'mnist-fc-nope'"):
        select_presets(["mnist-fc-nope"])
    with pytest.raises(BiopropError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_decisions_are_written_down():
    topics = " ".join(d.topic for d in DECISIONS)
    for topic in ("batch size", "validation split", "normalisation", "epoch budget", "augmentation",
                  "inverse Adam beta1", "alpha / sigma", "AO-SDTP"):
        assert topic in topics


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "mnist-fc-dtp-alternating" in out and "1.83" in out and "imagenet-lc-bp-conv" in out
    assert main(["presets", "cifar-lc-*"]) == 0
    out = capsys.readouterr().out
    assert "cifar-lc-bp-conv" in out and "mnist-fc-bp " not in out
    assert main(["presets", "--show", "cifar-lc-bp-conv"]) == 0
    assert '"model": "cifar-conv"' in capsys.readouterr().out
    assert main(["presets", "--decisions"]) == 0
    assert "inverse Adam beta1" in capsys.readouterr().out
    assert main(["presets", "--show", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_train_rejects_an_unknown_preset(capsys):
    assert main(["train", "--preset", "mnist-fc-nope", "--epochs", "1"]) == 2
    assert "unknown preset 'mnist-fc-nope'" in capsys.readouterr().err


def test_rules_beyond_the_paper_get_presets_on_every_network_from_their_column():
    from bioprop.presets import beyond

    rules = beyond.rules_beyond()
    assert {"usf", "brsf", "frsf", "kp", "wm", "drl", "l-drl", "hybrid", "pc", "pc-fixed", "ep", "fg", "pepita", "drtp", "ff"} <= set(rules)
    assert len(select_presets(["beyond"])) == len(rules) * len(beyond.NETWORKS)
    kp, fa = get_preset("mnist-fc-kp").config(), get_preset("mnist-fc-fa").config()
    assert kp.rule == "kp" and kp.optimizers == fa.optimizers  # FA's Table 5 column
    drl, dtp = get_preset("cifar-lc-drl").config(), get_preset("cifar-lc-dtp-parallel").config()
    assert drl.optimizers == dtp.optimizers and drl.rule_options["noise"] == dtp.rule_options["noise"]
    assert "alpha" not in drl.rule_options  # only the options the rule has
    assert get_preset("cifar-lc-hybrid").config().rule_options["alpha"] == dtp.rule_options["alpha"]
    assert "mnist-fc-kp" not in {p.name for p in select_presets(["mnist"])}  # the paper's groups stay the paper's


def test_the_studys_conventions_reach_every_paper_tp_cell_and_no_other():
    """TP_CONVENTIONS (the factorial study's choice) on every cell of the paper run by a TP rule; the
    rules beyond the paper keep their own defaults (their committed results were made with them)."""
    tp_cells = 0
    for preset in list_presets():
        options = preset.config().rule_options
        has = "inverse_reduction" in RULES.get(preset.rule).Options.__dataclass_fields__
        if has and not preset.beyond:
            expected = {**paper.TP_CONVENTIONS, **paper.METHOD_CONVENTIONS.get(preset.cell.method, {})}
            assert {k: options[k] for k in expected} == expected, preset.name
            tp_cells += 1
        else:
            assert not set(paper.TP_CONVENTIONS) & set(options), preset.name
    assert tp_cells >= 6 * 4 + 3  # MNIST, Fashion-MNIST, CIFAR-10 (FC and LC) and ImageNet TP cells
    assert get_preset("mnist-fc-sdtp-alternating").config().rule_options["forward_reduction"] == "element-mean"
    assert get_preset("mnist-fc-sdtp-parallel").config().rule_options["forward_reduction"] == "unit-sum"


def test_a_rules_preset_settings_go_over_its_column_and_nowhere_else():
    """``preset_settings`` (a searched learning rate, a rule option) reach every preset of that rule,
    on top of the column's other settings; the column's own rule keeps the column's."""
    from bioprop.presets import beyond

    with_settings = [name for name in beyond.rules_beyond() if RULES.get(name).preset_settings]
    assert {"pc", "ep", "fg", "pepita", "drtp", "ff"} <= set(with_settings)
    for rule in with_settings:
        settings = RULES.get(rule).preset_settings
        for dataset, arch in beyond.NETWORKS:
            prefix = paper.PRESET_PREFIX[dataset]
            config = get_preset(f"{prefix}-{arch}-{rule}").config()
            forward = config.optimizers["forward"]
            fa = get_preset(f"{prefix}-{arch}-fa").config().optimizers["forward"]
            for key, value in settings.items():
                assert config.rule_options.get(key, getattr(forward, key, None)) == value, (rule, key)
            assert forward.eps == fa.eps and forward.beta1 == fa.beta1  # the rest is FA's column
    assert get_preset("mnist-fc-fa").config().optimizers["forward"].lr == 0.000168
    # pc-fixed computes backprop's gradients: its presets are BP's settings
    for dataset, arch in beyond.NETWORKS:
        prefix = paper.PRESET_PREFIX[dataset]
        pc_fixed, bp = get_preset(f"{prefix}-{arch}-pc-fixed").config(), get_preset(f"{prefix}-{arch}-bp").config()
        assert pc_fixed.optimizers == bp.optimizers and pc_fixed.data == bp.data


def test_preset_settings_naming_nothing_the_rule_has_is_refused(monkeypatch):
    from bioprop.presets import beyond

    monkeypatch.setattr(RULES.get("kp"), "preset_settings", {"lrr": 1e-3})
    with pytest.raises(ValueError, match="rule 'kp': preset_settings names 'lrr'"):
        beyond.config("mnist", "fc", "kp")
