"""Optimisers and learning-rate schedules per parameter group (``bioprop.training.optimizers``):
known answers written out by hand (SGD with momentum, every schedule's rates), Adam unchanged
without a schedule, a schedule restored from its state continuing exactly, the settings' checks,
the command-line flags (and ``--lr-schedule`` never taken for target propagation's ``--schedule``),
older configs loading, and ``reproduce --vary`` over the new settings."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from bioprop.cli.args import UsageError
from bioprop.errors import BiopropError
from bioprop.training import AdamConfig, TrainConfig
from bioprop.training.config import OptimizerConfig
from bioprop.training.optimizers import LearningRateFactor, make_optimizer, make_scheduler

CPU = torch.device("cpu")
IMPLEMENTATIONS = ["plain", "foreach", "fused"]
GRADIENTS = [[1.0, -2.0], [0.5, 0.25], [-1.5, 3.0]]


def parameter(values=(0.3, -0.7)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def run(settings: OptimizerConfig, gradients, implementation="plain", steps_per_epoch=None, epochs=None):
    """The parameter after each step, and the learning rate each step used."""
    theta = parameter()
    optimizer = make_optimizer([theta], settings, implementation, CPU)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch, epochs) if steps_per_epoch else None
    path, rates = [], []
    for g in gradients:
        theta.grad = torch.tensor(g, dtype=torch.float64)
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        path.append(theta.detach().clone())
    return path, rates


# -- SGD -------------------------------------------------------------------------------------------

def sgd_by_hand(gradients, lr, momentum, nesterov=False, weight_decay=0.0, start=(0.3, -0.7)):
    """b_1 = g_1, b_t = μ b_{t-1} + g_t; θ -= lr b_t (Nesterov: θ -= lr (g_t + μ b_t)); g_t += λ θ first."""
    theta, buffer, path = list(start), None, []
    for g in gradients:
        g = [gi + weight_decay * ti for gi, ti in zip(g, theta)]
        buffer = list(g) if buffer is None else [momentum * b + gi for b, gi in zip(buffer, g)]
        step = [gi + momentum * b for gi, b in zip(g, buffer)] if nesterov else buffer
        theta = [ti - lr * si for ti, si in zip(theta, step)]
        path.append(theta)
    return path


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("nesterov, weight_decay", [(False, 0.0), (True, 0.0), (False, 0.1)])
def test_sgd_with_momentum_is_the_update_written_out(implementation, nesterov, weight_decay):
    settings = OptimizerConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
    settings.validate("forward")
    path, _ = run(settings, GRADIENTS, implementation)
    expected = sgd_by_hand(GRADIENTS, 0.1, 0.9, nesterov, weight_decay)
    for got, want in zip(path, expected):
        assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-15)
    # the first step by hand: θ - lr·g (the buffer starts as the gradient)
    assert path[0][0].item() == pytest.approx(0.3 - 0.1 * (1.0 + weight_decay * 0.3) * (1.9 if nesterov else 1.0))


def test_sgd_without_momentum_is_plain_gradient_descent():
    path, _ = run(OptimizerConfig(optimizer="sgd", lr=0.5), GRADIENTS)
    assert path[-1].tolist() == pytest.approx([0.3 - 0.5 * (1.0 + 0.5 - 1.5), -0.7 - 0.5 * (-2.0 + 0.25 + 3.0)])


# -- Adam and AdamW --------------------------------------------------------------------------------

def torch_path(optimizer_class, gradients, **kwargs):
    theta = parameter()
    optimizer = optimizer_class([theta], foreach=False, **kwargs)
    path = []
    for g in gradients:
        theta.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        path.append(theta.detach().clone())
    return path


def test_a_constant_schedule_leaves_adam_bit_identical():
    settings = OptimizerConfig(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6)
    optimizer = make_optimizer([parameter()], settings, "plain", CPU)
    assert make_scheduler(optimizer, settings, steps_per_epoch=7, epochs=3) is None  # nothing steps
    path, rates = run(settings, GRADIENTS, steps_per_epoch=7, epochs=3)
    reference = torch_path(torch.optim.Adam, GRADIENTS, lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(path, reference))
    assert rates == [0.01] * 3


def test_adam_with_weight_decay_is_adamw_as_before_and_adamw_says_so():
    """Configs written before ``optimizer`` existed (Adam, decay > 0) still train with AdamW's update."""
    reference = torch_path(torch.optim.AdamW, GRADIENTS, lr=0.01, weight_decay=0.5)
    for name in ("adam", "adamw"):
        optimizer = make_optimizer([parameter()], OptimizerConfig(optimizer=name, lr=0.01, weight_decay=0.5))
        assert type(optimizer) is torch.optim.AdamW
        path, _ = run(OptimizerConfig(optimizer=name, lr=0.01, weight_decay=0.5), GRADIENTS)
        assert all(torch.equal(a, b) for a, b in zip(path, reference))
    assert type(make_optimizer([parameter()], OptimizerConfig())) is torch.optim.Adam
    assert type(make_optimizer([parameter()], OptimizerConfig(optimizer="adamw"))) is torch.optim.AdamW


def test_the_tensorflow_epsilon_hook_still_comes_with_adam():
    settings = OptimizerConfig(lr=1.0, beta1=0.9, beta2=0.95, eps=1e-3, eps_convention="tensorflow")
    path, _ = run(settings, [[1e-3, 1e-3]])
    assert -(path[0][0].item() - 0.3) == pytest.approx(1e-3 / (1e-3 + 1e-3 / math.sqrt(0.05)))


# -- schedules -------------------------------------------------------------------------------------

def rates_of(settings: OptimizerConfig, steps: int, steps_per_epoch: int, epochs: int) -> list[float]:
    """The rate each of ``steps`` optimiser steps used, then the rate after the last."""
    optimizer = make_optimizer([parameter()], settings, "plain", CPU)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch, epochs)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        optimizer.step()
        scheduler.step()
    return rates + [optimizer.param_groups[0]["lr"]]


def test_warm_up_is_linear_then_constant():
    # 10 steps an epoch, half an epoch of warm-up: 5 steps at lr/5, 2lr/5, ..., lr; then lr
    rates = rates_of(OptimizerConfig(lr=0.2, warmup_epochs=0.5), 12, steps_per_epoch=10, epochs=2)
    assert rates == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.2] + [0.2] * 8, rel=1e-12)


def test_cosine_endpoints_midpoint_and_formula():
    lr, ratio, total = 0.1, 0.1, 40  # 4 epochs of 10 steps
    settings = OptimizerConfig(lr=lr, lr_schedule="cosine", min_lr_ratio=ratio)
    rates = rates_of(settings, total + 5, steps_per_epoch=10, epochs=4)
    assert rates[0] == pytest.approx(lr)
    assert rates[total // 2] == pytest.approx(lr * (1 + ratio) / 2)
    assert rates[total] == pytest.approx(lr * ratio)  # after the last step
    assert rates[total + 5] == pytest.approx(lr * ratio)  # and beyond, if training goes on
    expected = [lr * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
                for s in range(total + 6)]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_cosine_after_warm_up():
    # 1 epoch of 4 steps warm-up, then the cosine over the 8 remaining steps of 3 epochs
    rates = rates_of(OptimizerConfig(lr=1.0, lr_schedule="cosine", warmup_epochs=1), 12, 4, 3)
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)])


def test_step_decay():
    settings = OptimizerConfig(lr=0.8, lr_schedule="step", step_epochs=1, step_gamma=0.5)
    rates = rates_of(settings, 12, steps_per_epoch=4, epochs=3)
    assert rates == pytest.approx([0.8] * 4 + [0.4] * 4 + [0.2] * 4 + [0.1], rel=1e-12)
    # step decay with a warm-up: the decay counts from the first step, the warm-up multiplies it
    factor = LearningRateFactor(schedule="step", warmup_steps=2, total_steps=12, step_steps=4, step_gamma=0.5)
    assert [factor(s) for s in range(9)] == [0.5, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_durations_are_epochs_whatever_a_groups_steps_per_epoch():
    """A group stepping in only some passes (the inverses of the alternating schedule) gets its own
    steps per epoch: the rate at the same point of training is the same."""
    settings = OptimizerConfig(lr=1.0, lr_schedule="cosine", warmup_epochs=0.5)
    every_batch = rates_of(settings, 40, steps_per_epoch=20, epochs=2)
    every_other = rates_of(settings, 20, steps_per_epoch=10, epochs=2)
    assert every_other[4] == every_batch[9] == 1.0  # the last warm-up step: half an epoch in, in both
    assert every_other[5:] == pytest.approx(every_batch[10::2], rel=1e-12)  # the same cosine, epoch for epoch


def test_scheduler_arguments_are_checked():
    optimizer = make_optimizer([parameter()], OptimizerConfig())
    for bad in (dict(steps_per_epoch=0, epochs=1), dict(steps_per_epoch=3, epochs=0),
                dict(steps_per_epoch=2.5, epochs=1)):
        with pytest.raises(ValueError):
            make_scheduler(optimizer, OptimizerConfig(lr_schedule="cosine"), **bad)


@pytest.mark.parametrize("settings", [
    OptimizerConfig(lr=0.1, lr_schedule="cosine", warmup_epochs=0.4, min_lr_ratio=0.05),
    OptimizerConfig(lr=0.1, lr_schedule="step", step_epochs=0.5, step_gamma=0.3, optimizer="sgd", momentum=0.9),
    OptimizerConfig(lr=0.1, warmup_epochs=1, eps_convention="tensorflow"),
])
def test_a_restored_schedule_continues_the_same_rates_and_parameters(settings):
    """Save optimiser + schedule mid-run (through torch.save, weights only), rebuild both from the
    settings, load the optimiser's state then the schedule's: the same rates and parameters as a run
    never stopped."""
    gradients = [[math.sin(k), math.cos(3 * k)] for k in range(30)]

    def steps(theta, optimizer, scheduler, part):
        rates = []
        for g in part:
            theta.grad = torch.tensor(g, dtype=torch.float64)
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return rates

    def build(values=(0.3, -0.7)):
        theta = parameter(values)
        optimizer = make_optimizer([theta], settings, "plain", CPU)
        return theta, optimizer, make_scheduler(optimizer, settings, steps_per_epoch=5, epochs=6)

    theta, optimizer, scheduler = build()
    straight = steps(theta, optimizer, scheduler, gradients)
    final = theta.detach().clone()

    theta, optimizer, scheduler = build()
    first = steps(theta, optimizer, scheduler, gradients[:13])
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "theta": theta.detach()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    theta, optimizer, scheduler = build(saved["theta"].tolist())  # a fresh process: rates start over here
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rest = steps(theta, optimizer, scheduler, gradients[13:])
    assert first + rest == straight
    assert torch.equal(theta.detach(), final)


def test_a_restored_schedule_keeps_the_horizon_it_started_with():
    """Resuming with more epochs (allowed on resume) does not bend a running cosine: the state holds it."""
    settings = OptimizerConfig(lr=1.0, lr_schedule="cosine")
    optimizer = make_optimizer([parameter()], settings)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch=10, epochs=2)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    longer = make_scheduler(make_optimizer([parameter()], settings), settings, steps_per_epoch=10, epochs=4)
    longer.load_state_dict(scheduler.state_dict())
    assert longer.lr_lambdas[0].total_steps == 20
    assert longer.get_last_lr() == pytest.approx([0.5])


# -- settings' checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    (dict(optimizer="rmsprop"), "inverse optimiser: optimizer must be one of adam, adamw, sgd"),
    (dict(lr_schedule="linear"), "inverse optimiser: lr_schedule must be one of constant, cosine, step"),
    (dict(lr_schedule="alternating"), "inverse optimiser: lr_schedule must be one of"),
    (dict(optimizer="sgd", momentum=1.0), r"inverse optimiser: momentum must be in \[0, 1\), got 1.0"),
    (dict(optimizer="sgd", momentum=math.nan), "inverse optimiser: momentum must be a finite number, got nan"),
    (dict(momentum=0.9), "inverse optimiser: momentum 0.9 applies to optimizer sgd only, not 'adam'"),
    (dict(optimizer="sgd", nesterov=True), "inverse optimiser: nesterov needs momentum > 0"),
    (dict(optimizer="adamw", nesterov=True), "inverse optimiser: nesterov True applies to optimizer sgd only"),
    (dict(optimizer="sgd", momentum=0.9, nesterov="yes"), "inverse optimiser: nesterov must be true or false"),
    (dict(optimizer="sgd", eps_convention="tensorflow"),
     "inverse optimiser: eps_convention 'tensorflow' applies to optimizer adam or adamw only, not 'sgd'"),
    (dict(warmup_epochs=-1.0), "inverse optimiser: warmup_epochs must be >= 0, got -1.0"),
    (dict(warmup_epochs="1"), "inverse optimiser: warmup_epochs must be a finite number"),
    (dict(lr_schedule="cosine", min_lr_ratio=1.5), r"inverse optimiser: min_lr_ratio must be in \[0, 1\]"),
    (dict(min_lr_ratio=0.1), "inverse optimiser: min_lr_ratio 0.1 applies to lr_schedule cosine only, not 'constant'"),
    (dict(lr_schedule="step", step_epochs=0), "inverse optimiser: step_epochs must be > 0, got 0"),
    (dict(lr_schedule="step", step_gamma=0), r"inverse optimiser: step_gamma must be in \(0, 1\], got 0"),
    (dict(lr_schedule="cosine", step_gamma=0.5), "inverse optimiser: step_gamma 0.5 applies to lr_schedule step only"),
    (dict(optimizer="sgd", lr=0.0), "inverse optimiser: learning rate must be > 0"),
])
def test_bad_settings_name_the_group_and_field(settings, message):
    with pytest.raises(BiopropError, match=message):
        OptimizerConfig(**settings).validate("inverse")


def test_good_settings_pass():
    for settings in (dict(), dict(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4),
                     dict(optimizer="adamw", weight_decay=0.01, lr_schedule="cosine", min_lr_ratio=0.01,
                          warmup_epochs=2), dict(lr_schedule="step", step_epochs=30, step_gamma=0.1, warmup_epochs=5),
                     dict(lr_schedule="constant", warmup_epochs=0.5), dict(optimizer="sgd", warmup_epochs=1)):
        OptimizerConfig(**settings).validate("forward")


# -- configs written before these settings existed -----------------------------------------------

OLD = {"data": {"name": "mnist"}, "model": "mnist-fc", "rule": "dtp",
       "optimizers": {"forward": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.01,
                                  "eps_convention": "pytorch"},
                      "inverse": {"lr": 1e-4}}}


def test_old_config_dicts_load_with_the_defaults_and_train_as_before():
    config = TrainConfig.from_dict(OLD)
    config.validate()
    forward = config.optimizers["forward"]
    assert (forward.optimizer, forward.lr_schedule, forward.warmup_epochs, forward.momentum) == \
        ("adam", "constant", 0.0, 0.0)
    assert config.optimizers["inverse"] == OptimizerConfig(lr=1e-4)
    assert type(make_optimizer([parameter()], forward)) is torch.optim.AdamW  # weight decay: AdamW, as before
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert AdamConfig is OptimizerConfig  # the old name: imports and from_dict both keep working


def test_new_settings_round_trip_and_unknown_ones_are_named():
    config = TrainConfig.from_dict(OLD)
    config.optimizers["forward"] = OptimizerConfig(optimizer="sgd", momentum=0.9, nesterov=True,
                                                   lr_schedule="cosine", warmup_epochs=1.5, min_lr_ratio=0.1)
    assert TrainConfig.from_dict(config.to_dict()) == config
    bad = {**OLD, "optimizers": {"forward": {"lr": 1e-3, "lr_shedule": "cosine"}}}
    with pytest.raises(BiopropError, match="unknown optimizers.forward field.*'lr_shedule'.*lr_schedule"):
        TrainConfig.from_dict(bad)


# -- command line ----------------------------------------------------------------------------------

def prepared(*argv):
    from bioprop.cli import parse_args
    from bioprop.cli.train import prepare

    return prepare(parse_args(["train", *argv]))[0]


def test_cli_flags_land_in_the_config():
    config = prepared("--data", "mnist", "--model", "mnist-fc", "--optimizer", "sgd", "--lr", "0.05",
                      "--momentum", "0.9", "--nesterov", "--weight-decay", "1e-4", "--lr-schedule", "cosine",
                      "--warmup-epochs", "1", "--min-lr-ratio", "0.01")
    assert config.optimizers["forward"] == OptimizerConfig(
        optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, lr_schedule="cosine",
        warmup_epochs=1.0, min_lr_ratio=0.01)
    config = prepared("--preset", "mnist-fc-dtp-alternating", "--inverse-optimizer", "sgd",
                      "--inverse-momentum", "0.5", "--inverse-lr-schedule", "step", "--inverse-step-epochs", "2",
                      "--inverse-step-gamma", "0.5", "--lr-schedule", "cosine")
    inverse, forward = config.optimizers["inverse"], config.optimizers["forward"]
    assert (inverse.optimizer, inverse.momentum, inverse.lr_schedule, inverse.step_epochs, inverse.step_gamma) == \
        ("sgd", 0.5, "step", 2.0, 0.5)
    assert (forward.optimizer, forward.lr_schedule) == ("adam", "cosine")
    assert config.rule_options["schedule"] == "alternating"  # TP's update order, untouched
    config = prepared("--preset", "mnist-fc-kp", "--lr-schedule", "step", "--step-epochs", "5")
    assert config.optimizer_settings("feedback").lr_schedule == "step"  # a group that follows the forward one


def test_cli_errors_name_the_flag_or_field():
    with pytest.raises(BiopropError, match="--inverse-lr-schedule: rule 'bp' has no 'inverse' parameter group"):
        prepared("--data", "mnist", "--model", "mnist-fc", "--inverse-lr-schedule", "cosine")
    with pytest.raises(BiopropError, match="forward optimiser: momentum 0.9 applies to optimizer sgd only"):
        prepared("--data", "mnist", "--model", "mnist-fc", "--momentum", "0.9")
    with pytest.raises(UsageError, match="argument --optimizer: invalid choice: 'rmsprop'"):
        prepared("--data", "mnist", "--model", "mnist-fc", "--optimizer", "rmsprop")
    with pytest.raises(UsageError, match="argument --warmup-epochs: expected a finite number"):
        prepared("--data", "mnist", "--model", "mnist-fc", "--warmup-epochs", "nan")


def test_lr_schedule_and_tp_schedule_cannot_be_confused():
    base = ["--data", "mnist", "--model", "mnist-fc", "--rule", "dtp"]
    with pytest.raises(UsageError, match="argument --schedule: 'cosine' is a learning-rate schedule, set by "
                                         "--lr-schedule"):
        prepared(*base, "--schedule", "cosine")
    with pytest.raises(UsageError, match="argument --lr-schedule: 'alternating' is an order of target "
                                         "propagation's updates, set by --schedule"):
        prepared(*base, "--lr-schedule", "alternating")
    with pytest.raises(UsageError, match="argument --schedule: invalid choice: 'sometimes'"):
        prepared(*base, "--schedule", "sometimes")
    # no abbreviations: --lr-sched and --sched are refused, with both flags named and told apart
    with pytest.raises(UsageError, match=r"unrecognized arguments: --lr-sched cosine \(--lr-sched: did you mean "
                                         r"--lr-schedule \(the learning-rate schedule\)"):
        prepared(*base, "--lr-sched", "cosine")
    with pytest.raises(UsageError, match=r"--sched: did you mean --schedule \(target propagation's order"):
        prepared(*base, "--sched", "alternating")
    from bioprop.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {flag: action.help for action in train._actions for flag in action.option_strings}
    assert "Not target propagation's order of forward and inverse updates, which is --schedule" in \
        helps["--lr-schedule"]
    assert "not the learning-rate schedule, which is --lr-schedule" in helps["--schedule"]
    assert "--inverse-min-lr-ratio" in helps["--inverse-lr-schedule"]


# -- reproduce --vary ------------------------------------------------------------------------------

def test_vary_over_optimisers_and_schedules():
    from bioprop.experiments.reproduce import parse_grid, plan_runs
    from bioprop.presets import select_presets

    grid = parse_grid(["lr_schedule=constant,cosine", "inverse.optimizer=adam,sgd"])
    specs = plan_runs(select_presets(["mnist-fc-dtp-parallel"]), seeds=1, grid=grid)
    settings = {s.folder: (s.config.optimizers["forward"].lr_schedule, s.config.optimizers["inverse"].lr_schedule,
                           s.config.optimizers["inverse"].optimizer) for s in specs}
    assert settings == {
        "mnist-fc-dtp-parallel.lr_schedule=constant.inverse.optimizer=adam": ("constant", "constant", "adam"),
        "mnist-fc-dtp-parallel.lr_schedule=constant.inverse.optimizer=sgd": ("constant", "constant", "sgd"),
        "mnist-fc-dtp-parallel.lr_schedule=cosine.inverse.optimizer=adam": ("cosine", "cosine", "adam"),
        "mnist-fc-dtp-parallel.lr_schedule=cosine.inverse.optimizer=sgd": ("cosine", "cosine", "sgd")}
    assert all(s.config.optimizers["inverse"].lr == pytest.approx(7.68e-4) for s in specs)  # Table 5 kept
    grid = parse_grid(["optimizer=sgd", "momentum=0.9", "nesterov=true,false", "warmup_epochs=1"])
    assert grid["nesterov"] == [True, False] and grid["warmup_epochs"] == [1]
    specs = plan_runs(select_presets(["mnist-fc-bp"]), seeds=1, grid=grid)
    assert [dataclasses.astuple(s.config.optimizers["forward"])[6:10] for s in specs] == \
        [("sgd", 0.9, True, "constant"), ("sgd", 0.9, False, "constant")]
    with pytest.raises(BiopropError, match="mnist-fc-bp.momentum=0.9: forward optimiser: momentum 0.9 applies to "
                                           "optimizer sgd only"):
        plan_runs(select_presets(["mnist-fc-bp"]), seeds=1, grid={"momentum": [0.9]})
