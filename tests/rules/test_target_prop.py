"""Target propagation (tp, dtp, sdtp, ao-sdtp): known answers for the targets, locality of every
local loss, backprop as the special case g = transposed Jacobian, schedules, option errors,
updates for every rule x model, and the CLI end to end on real MNIST."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioprop.errors import BiopropError
from bioprop.models import create_model, list_models
from bioprop.rules import create_rule
from bioprop.rules.base import task_loss
from bioprop.rules.target_prop.base import angle_degrees, gaussian_noise, squared_error
from bioprop.training.config import AdamConfig
from bioprop.training.trainer import make_optimizer
from realdata import missing_reason, real_data_root
from small_networks import ExactInverse, batch, fc_network

TP_RULES = ["tp", "dtp", "sdtp", "ao-sdtp"]
LAYER_TYPE_MODELS = ["mnist-fc", "mnist-lc", "mnist-conv"]  # FC, LC (+ flatten), conv (+ flatten)
SMALL_MODELS = [name for name in list_models() if not name.startswith("imagenet")]
DATA = real_data_root("mnist") or Path("/nonexistent")


def make_rule(rule_name, model, **options):
    if rule_name == "ao-sdtp":
        options.setdefault("aux_units", 16)
    return create_rule(rule_name, model, seed=3, **options)


class TransposedJacobian(nn.Module):
    """g_bp(h) = (dh_{l+1}/dh_l)^T h = h W_{l+1} for a linear block (reference §1.6)."""

    def __init__(self, block):
        super().__init__()
        self.block = [block]

    def forward(self, h):
        return h @ self.block[0].layer.weight


# -- the angle diagnostic ----------------------------------------------------------------------
def test_angle_known_answers():
    a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0, 0.0], [-2.0, -4.0, -6.0], [5.0, 0.0, -1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    angles = angle_degrees(a, b)
    torch.testing.assert_close(angles, torch.tensor([0.0, 180.0, 90.0, 45.0, 90.0], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    images = torch.randn(3, 2, 4, 4)  # dims beyond the batch are flattened
    torch.testing.assert_close(angle_degrees(images, 3 * images), torch.zeros(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)


# -- locality -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule_name", TP_RULES)
@pytest.mark.parametrize("model_name", LAYER_TYPE_MODELS)
def test_each_local_loss_reaches_only_its_own_parameters(rule_name, model_name):
    torch.manual_seed(0)
    model = create_model(model_name)
    rule = make_rule(rule_name, model)
    everything = list(rule.parameters())
    owner = {id(p): ("forward", i) for i, block in enumerate(model.blocks) for p in block.parameters()}
    owner.update({id(p): ("inverse", i) for i in rule.inverse_indices() for p in rule.inverse(i).parameters()})
    assert len(owner) == len(everything)
    losses = rule.local_losses(*batch(model, size=3), forward=True, inverse=True)
    assert sorted(losses.forward) == list(range(len(model.blocks)))
    expected_inverses = list(range(1, len(model.blocks) - (rule_name == "dtp")))
    assert sorted(losses.inverse) == expected_inverses
    for group, per_block in (("forward", losses.forward), ("inverse", losses.inverse)):
        for index, loss in per_block.items():
            grads = torch.autograd.grad(loss, everything, allow_unused=True, retain_graph=True)
            for parameter, grad in zip(everything, grads):
                mine = owner[id(parameter)] == (group, index)
                assert (grad is not None) == mine, (group, index, owner[id(parameter)])


@pytest.mark.parametrize("rule_name", TP_RULES)
def test_gradients_fill_only_the_groups_being_trained(rule_name):
    torch.manual_seed(0)
    model = create_model("mnist-lc")
    rule = make_rule(rule_name, model)
    x, y = batch(model)
    groups = rule.parameter_groups()
    for trained in (("forward",), ("inverse",)):
        rule.zero_grad(set_to_none=True)
        rule.compute_gradients(x, y, trained)
        for group, params in groups.items():
            for parameter in params:
                assert (parameter.grad is not None) == (group in trained), (trained, group)


# -- targets with known answers --------------------------------------------------------------------
def exact_inverses(rule):
    for index in rule.inverse_indices():
        if index < len(rule.model.blocks) - 1:
            rule.inverses[rule.layer_name(index)] = ExactInverse(rule.model.blocks[index])


@pytest.mark.parametrize("rule_name", ["dtp", "sdtp", "ao-sdtp"])
def test_difference_targets_with_exact_inverses_propagate_consistently(rule_name):
    """With g_l = f_l^{-1}, the correction h - g(h) vanishes, so f_l(ĥ_{l-1}) = ĥ_l at every layer."""
    model = fc_network([5, 5, 5, 5])
    rule = make_rule(rule_name, model, alpha=0.05) if rule_name == "dtp" else make_rule(rule_name, model)
    exact_inverses(rule)
    if rule_name != "dtp":  # keep the penultimate target inside tanh's range
        with torch.no_grad():
            rule.inverse(len(model.blocks) - 1).weight.mul_(0.1)
    x, y = batch(model, size=6, dtype=torch.float64)
    h = [t.detach() for t in model.hidden_activations(x)]
    targets = rule.targets(h, y)
    assert len(targets) == len(h) - 1
    for index in range(1, len(targets)):
        torch.testing.assert_close(model.blocks[index](targets[index - 1]), targets[index])
    assert not torch.allclose(targets[-1], h[-2])


@pytest.mark.parametrize("rule_name", TP_RULES)
@pytest.mark.parametrize("model_name", LAYER_TYPE_MODELS)
def test_lower_targets_follow_the_rule_formula_for_every_layer_type(rule_name, model_name):
    torch.manual_seed(0)
    model = create_model(model_name)
    rule = make_rule(rule_name, model)
    x, y = batch(model, size=3)
    h = [t.detach() for t in model.hidden_activations(x)]
    targets = rule.targets(h, y)
    for index in range(1, len(targets)):
        g = rule.inverse(index)
        expected = g(targets[index]) if rule_name == "tp" else h[index - 1] + g(targets[index]) - g(h[index])
        assert targets[index - 1].shape == h[index - 1].shape
        torch.testing.assert_close(targets[index - 1], expected, rtol=1e-5, atol=1e-5)


def test_dtp_penultimate_target_is_a_gradient_step_of_size_alpha():
    model = fc_network([5, 5, 5])
    for reduction, scale in (("sum", 1.0), ("mean", 1.0 / 6)):
        rule = make_rule("dtp", model, alpha=0.3, target_reduction=reduction)
        x, y = batch(model, size=6, dtype=torch.float64)
        h = [t.detach() for t in model.hidden_activations(x)]
        penultimate = h[-2].clone().requires_grad_()
        (gradient,) = torch.autograd.grad(F.cross_entropy(model.blocks[-1](penultimate), y, reduction="sum"),
                                          penultimate)
        torch.testing.assert_close(rule.targets(h, y)[-1], h[-2] - 0.3 * scale * gradient)


@pytest.mark.parametrize("rule_name", ["sdtp", "ao-sdtp"])
def test_sdtp_penultimate_target_uses_the_output_inverse_on_probabilities(rule_name):
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    rule = make_rule(rule_name, model)
    x, y = batch(model, size=5)
    h = [t.detach() for t in model.hidden_activations(x)]
    g = rule.inverse(len(h) - 1)
    probabilities, onehot = torch.softmax(h[-1], 1), F.one_hot(y, 10).float()
    if rule_name == "ao-sdtp":
        z = torch.tanh(h[-2] @ rule.aux_weight.t())  # the same z in both calls
        probabilities, onehot = torch.cat([probabilities, z], 1), torch.cat([onehot, z], 1)
    expected = h[-2] - g(probabilities) + g(onehot)
    torch.testing.assert_close(rule.targets(h, y)[-1], expected, rtol=1e-5, atol=1e-6)


def test_vanilla_tp_maps_every_example_of_a_class_to_one_target():
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    rule = make_rule("tp", model)
    x = torch.randn(3, 1, 28, 28)
    y = torch.tensor([4, 4, 7])
    h = [t.detach() for t in model.hidden_activations(x)]
    for target in rule.targets(h, y):
        torch.testing.assert_close(target[0], target[1])
        assert not torch.allclose(target[0], target[2])
    g = rule.inverse(len(h) - 1)
    torch.testing.assert_close(rule.targets(h, y)[-1], g(F.one_hot(y, 10).float()))


def test_ao_sdtp_auxiliary_weights_are_fixed_buffers():
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    rule = create_rule("ao-sdtp", model, seed=4)
    assert rule.aux_weight.shape == (512, 256)
    assert "aux_weight" in rule.state_dict() and all(p is not rule.aux_weight for p in rule.parameters())
    assert rule.inverse(len(model.blocks) - 1).weight.shape == (10 + 512, 256)
    initial = rule.aux_weight.clone()
    optimizers = {g: torch.optim.Adam(p, lr=1e-2) for g, p in rule.parameter_groups().items()}
    h_before = model.hidden_activations(batch(model)[0])[-2].detach()
    z_before = rule.auxiliary(h_before)
    for step in range(3):
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        rule.compute_gradients(*batch(model, seed=step), ("forward", "inverse"))
        for optimizer in optimizers.values():
            optimizer.step()
    assert torch.equal(rule.aux_weight, initial)
    torch.testing.assert_close(rule.auxiliary(h_before), z_before, rtol=0, atol=0)
    assert torch.equal(create_rule("ao-sdtp", model, seed=4).aux_weight, initial)  # seeded
    assert not torch.equal(create_rule("ao-sdtp", model, seed=5).aux_weight, initial)


# -- backprop as a special case (reference §1.6) ---------------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_dtp_with_transposed_jacobian_inverses_is_backprop(reduction):
    """Linear layers, g_bp(h) = J^T h: ĥ_l - h_l = -α dL/dh_l (L summed over the batch), and each
    hidden layer's local gradient is α times backprop's gradient of the batch-mean loss."""
    model = fc_network([6, 5, 4, 4], activation="identity")
    alpha, size = 0.2, 7
    rule = make_rule("dtp", model, alpha=alpha, target_reduction=reduction)
    for index in rule.inverse_indices():
        rule.inverses[rule.layer_name(index)] = TransposedJacobian(model.blocks[index])
    x, y = batch(model, size=size, dtype=torch.float64)
    scale = alpha if reduction == "sum" else alpha / size

    hidden = model.hidden_activations(x)
    bp_shift = torch.autograd.grad(F.cross_entropy(hidden[-1], y, reduction="sum"), hidden[:-1])
    h = [t.detach() for t in hidden]
    for index, target in enumerate(rule.targets(h, y)):
        torch.testing.assert_close(target - h[index], -scale * bp_shift[index])

    model.zero_grad()
    task_loss(model(x), y).backward()
    bp_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    rule.compute_gradients(x, y, ("forward",))
    last = len(model.blocks) - 1
    for name, parameter in model.named_parameters():
        factor = 1.0 if name.startswith(f"blocks.{last}.") else alpha if reduction == "sum" else alpha / size
        torch.testing.assert_close(parameter.grad, factor * bp_grads[name], msg=name)


# -- inverse losses --------------------------------------------------------------------------------
@pytest.mark.parametrize("rule_name,default", [("dtp", "noise-preserving"), ("sdtp", "denoising"),
                                               ("ao-sdtp", "denoising"), ("tp", "denoising")])
@pytest.mark.parametrize("choice", [None, "noise-preserving", "denoising"])
def test_inverse_loss_kinds_and_defaults(rule_name, default, choice):
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    rule = make_rule(rule_name, model, noise=0.3, inverse_loss=choice)
    kind = choice or default
    h = [t.detach() for t in model.hidden_activations(batch(model)[0])]
    torch.manual_seed(11)
    losses = rule.inverse_losses(h)
    torch.manual_seed(11)
    last = len(h) - 1
    for index in rule.inverse_indices():
        clean = h[index - 1]
        noisy = clean + gaussian_noise(clean, 0.3)
        above = model.blocks[index](noisy)
        if index == last:
            above = rule.output_features(noisy, above)
        reconstruction = rule.inverse(index)(above)
        expected = 0.5 * ((reconstruction - (noisy if kind == "noise-preserving" else clean)) ** 2).sum(1).mean()
        torch.testing.assert_close(losses[index], expected)


def test_gaussian_noise_has_the_requested_std_and_the_activation_layout():
    torch.manual_seed(0)
    permuted = torch.zeros(7, 6, 50, 40).permute(3, 2, 0, 1)  # batch-innermost, like LC outputs
    noise = gaussian_noise(permuted, 0.25)
    assert noise.shape == permuted.shape and noise.stride() == permuted.stride()
    assert abs(noise.mean().item()) < 0.01 and noise.std().item() == pytest.approx(0.25, rel=0.02)
    assert noise[0].std().item() == pytest.approx(0.25, rel=0.1)  # every example gets noise
    assert noise[-1].std().item() == pytest.approx(0.25, rel=0.1)
    sliced = torch.zeros(10, 8)[:, :3]  # not dense: a contiguous tensor comes back
    assert gaussian_noise(sliced, 1.0).is_contiguous() and gaussian_noise(sliced, 1.0).shape == (10, 3)


def test_squared_error_is_half_the_sum_over_units_averaged_over_the_batch():
    a, b = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 1.0]])
    assert squared_error(a, b).item() == pytest.approx(0.5 * (9 + 1) / 2)


# -- schedules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rule_name", TP_RULES)
def test_alternating_epoch_is_an_inverse_pass_then_a_forward_pass(rule_name):
    torch.manual_seed(0)
    model = create_model("mnist-lc")
    rule = make_rule(rule_name, model, schedule="alternating")
    parallel = make_rule(rule_name, create_model("mnist-fc"))
    assert parallel.passes() == (("forward", "inverse"),)
    assert rule.passes() == (("inverse",), ("forward",))
    groups = rule.parameter_groups()
    optimizers = {g: make_optimizer(p, AdamConfig(lr=1e-3)) for g, p in groups.items()}
    for index, trained in enumerate(rule.passes()):
        before = {g: [p.detach().clone() for p in params] for g, params in groups.items()}
        for step in range(2):
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            rule.compute_gradients(*batch(model, size=3, seed=10 * index + step), trained)
            for optimizer in optimizers.values():  # all of them: an untouched group must not move
                optimizer.step()
        for group, params in groups.items():
            changed = [not torch.equal(p, q) for p, q in zip(params, before[group])]
            assert all(changed) if group in trained else not any(changed), (index, group)


# -- every parameter learns, every rule x model -------------------------------------------------------
def assert_every_parameter_gets_a_gradient(rule_name, model_name, size=2):
    torch.manual_seed(0)
    model = create_model(model_name)
    rule = make_rule(rule_name, model)
    groups = rule.parameter_groups()
    assert len(groups["forward"]) + len(groups["inverse"]) == len(list(rule.parameters()))
    rule.compute_gradients(*batch(model, size=size), ("forward", "inverse"))
    for name, parameter in rule.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("rule_name", TP_RULES)
@pytest.mark.parametrize("model_name", SMALL_MODELS)
def test_every_parameter_receives_an_update(rule_name, model_name):
    assert_every_parameter_gets_a_gradient(rule_name, model_name)


@pytest.mark.slow
@pytest.mark.parametrize("rule_name", TP_RULES)
@pytest.mark.parametrize("model_name", ["imagenet-lc", "imagenet-conv"])
def test_every_parameter_receives_an_update_imagenet(rule_name, model_name):
    assert_every_parameter_gets_a_gradient(rule_name, model_name)


@pytest.mark.parametrize("rule_name", TP_RULES)
def test_imagenet_lc_inverses_double_the_weights(rule_name):
    with torch.device("meta"):
        model = create_model("imagenet-lc")
        rule = make_rule(rule_name, model)
    forward = sum(layer.weight.numel() for layer in model.layers)
    inverse = sum(rule.inverse(i).weight.numel() for i in rule.inverse_indices())
    first, last = model.layers[0].weight.numel(), model.layers[-1].weight.numel()
    aux = 16 * last // 1000 if rule_name == "ao-sdtp" else 0  # the output inverse also reads z
    expected = forward - first - (last if rule_name == "dtp" else 0) + aux
    assert inverse == expected
    for index in rule.inverse_indices()[:-1]:
        assert rule.inverse(index).weight.shape == model.layers[index].weight.shape


@pytest.mark.parametrize("model_name", LAYER_TYPE_MODELS)
def test_inverses_return_the_unflattened_shape_of_the_layer_below(model_name):
    torch.manual_seed(0)
    model = create_model(model_name)
    rule = make_rule("sdtp", model)
    x, y = batch(model, size=2)
    h = model.hidden_activations(x)
    for index in rule.inverse_indices()[:-1]:
        assert rule.inverse(index)(h[index]).shape == h[index - 1].shape
    last = len(h) - 1
    assert rule.inverse(last)(rule.output_features(h[-2], h[-1])).shape == h[-2].shape


# -- diagnostics -----------------------------------------------------------------------------------
def test_diagnostics_report_every_layer_at_the_chosen_frequency():
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    rule = make_rule("dtp", model, diagnostics_every=3)
    reported = []
    for step in range(6):
        rule.zero_grad()
        reported.append(rule.compute_gradients(*batch(model, seed=step), ("forward", "inverse")).diagnostics)
    assert [bool(d) for d in reported] == [True, False, False, True, False, False]
    keys = set(reported[0])
    assert {f"target_angle/layer{l}" for l in range(1, 6)} <= keys
    assert {f"reconstruction_error/layer{l}" for l in range(2, 6)} <= keys  # no inverse of layers 1 and 6
    assert "reconstruction_error/layer6" not in keys and "reconstruction_error/layer1" not in keys
    # DTP's penultimate target is a gradient step: exactly aligned with backprop
    assert reported[0]["target_angle/layer5"] == pytest.approx(0.0, abs=1e-3)
    assert all(0 <= reported[0][f"target_angle/layer{l}"] <= 180 for l in range(1, 5))
    assert all(math.isfinite(v) for v in reported[0].values())
    assert not make_rule("dtp", model, diagnostics_every=0).compute_gradients(*batch(model), ("forward",)).diagnostics


def test_reconstruction_error_is_zero_for_an_exact_inverse():
    model = fc_network([5, 5, 5, 5])
    rule = make_rule("dtp", model, diagnostics_every=1)
    exact_inverses(rule)
    step = rule.compute_gradients(*batch(model, dtype=torch.float64), ("forward",))
    assert step.diagnostics["reconstruction_error/layer2"] == pytest.approx(0.0, abs=1e-20)


# -- options -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule_name,options,named", [
    ("dtp", {"noise": -0.1}, "noise"),
    ("sdtp", {"noise": float("nan")}, "noise"),
    ("ao-sdtp", {"aux_units": -1}, "aux_units"),
    ("ao-sdtp", {"aux_units": 2.5}, "aux_units"),
    ("tp", {"schedule": "sometimes"}, "schedule"),
    ("sdtp", {"inverse_loss": "contractive"}, "inverse_loss"),
    ("dtp", {"alpha": 0.0}, "alpha"),
    ("dtp", {"target_reduction": "max"}, "target_reduction"),
    ("sdtp", {"diagnostics_every": -1}, "diagnostics_every"),
    ("sdtp", {"alpha": 0.1}, "alpha"),  # SDTP has no gradient step
    ("dtp", {"aux_units": 8}, "aux_units"),
])
def test_bad_options_name_the_option(rule_name, options, named):
    with pytest.raises(BiopropError, match=named):
        create_rule(rule_name, create_model("mnist-fc"), **options)


def test_cli_flags_exist(capsys):
    from bioprop.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--alpha", "--noise", "--aux-units", "--schedule", "--inverse-loss", "--diagnostics-every",
                 "--target-reduction", "--inverse-lr", "--inverse-beta1", "--inverse-beta2", "--inverse-eps"):
        assert flag in text, flag


# -- end to end ----------------------------------------------------------------------------------
@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=missing_reason("mnist"))
def test_cli_trains_dtp_alternating_on_real_mnist_and_writes_diagnostics(tmp_path, capsys):
    from bioprop.cli import main

    out = tmp_path / "run"
    status = main(["train", "--data", "mnist", "--data-dir", str(DATA), "--model", "mnist-fc", "--rule", "dtp",
                   "--schedule", "alternating", "--epochs", "2", "--batch-size", "50", "--limit-batches", "4",
                   "--limit-eval-batches", "1", "--alpha", "0.2", "--noise", "0.2", "--diagnostics-every", "2",
                   "--inverse-lr", "1e-3", "--inverse-beta1", "0.9", "--no-progress", "--out", str(out),
                   "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all([p["groups"] for p in row["passes"]] == [["inverse"], ["forward"]] for row in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["rule_options"] == {"schedule": "alternating", "alpha": 0.2, "noise": 0.2, "diagnostics_every": 2}
    for row in rows:
        inverse_pass, forward_pass = row["passes"]
        for diagnostics in (inverse_pass["diagnostics"], forward_pass["diagnostics"]):
            assert {"reconstruction_error/layer2", "target_angle/layer1", "target_angle/layer5"} <= set(diagnostics)
            assert diagnostics["target_angle/layer5"] == pytest.approx(0.0, abs=1e-2)
        assert "inverse_loss/layer2" in inverse_pass["diagnostics"]
        assert "forward_loss/layer1" not in inverse_pass["diagnostics"]
        assert "forward_loss/layer1" in forward_pass["diagnostics"]
        assert "inverse_loss/layer2" not in forward_pass["diagnostics"]


def test_ao_sdtp_without_auxiliary_units_is_sdtp():
    """AO-SDTP with aux_units = 0 computes SDTP's gradients exactly (the Figure 4 sweep's 0 point)."""
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    grads = []
    for name, options in (("sdtp", {}), ("ao-sdtp", {"aux_units": 0})):
        torch.manual_seed(0)
        rule = create_rule(name, create_model("mnist-fc"), seed=0, noise=0.0, **options)
        rule.compute_gradients(x, y, ("forward", "inverse"))
        grads.append([p.grad.clone() for p in rule.parameters()])
    assert len(grads[0]) == len(grads[1])
    for sdtp, ao in zip(*grads):
        torch.testing.assert_close(ao, sdtp, rtol=0, atol=0)
