"""Predictive coding (``pc``, ``pc-fixed``): known answers.

* Fixed prediction, rate 1, T >= L - 1 steps: backprop's gradients to float64 rounding, on FC, LC and
  convolutional networks, for the task loss at the output and for a clamped output (then backprop's of
  ½||y* - h_L||²), for any error weighting; with fewer steps exactly the top T + 1 layers learn.
* Standard: the update is the energy's gradient at the state where the inference stopped (checked by
  autograd of F written out here), that state is an equilibrium of F when the inference converged, and
  the update's angle to backprop's gradient falls as the inference converges and as gamma falls.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.models.zoo import LayerSpec, build_network
from bioprop.rules import create_rule
from small_networks import batch

MODELS = ["mnist-fc", "mnist-lc", "mnist-conv"]


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def angle(a, b):
    cosine = float(a @ b / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def backprop(model, x, loss_of):
    model.zero_grad(set_to_none=True)
    loss_of(model(x)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def rule_gradients(name, model, x, y, **options):
    rule = create_rule(name, model, **options)
    model.zero_grad(set_to_none=True)
    step = rule.compute_gradients(x, y, ("forward",))
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    return grads, step


def float64_model(name, seed=0):
    torch.manual_seed(seed)
    return create_model(name).double()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("steps", [0, "L-1", "L"])
@pytest.mark.parametrize("gamma", [1.0, 0.3])
def test_fixed_prediction_gives_backprop_gradients(model_name, steps, gamma):
    model = float64_model(model_name)
    x, y = batch(model, size=3, dtype=torch.float64)
    layers = len(model.blocks)
    steps = {0: 0, "L-1": layers - 1, "L": layers}[steps]  # 0: the default, one step per hidden layer
    expected = backprop(model, x, lambda logits: F.cross_entropy(logits, y))
    got, step = rule_gradients("pc-fixed", model, x, y, inference_steps=steps, output_weight=gamma)
    for name, a, b in zip(dict(model.named_parameters()), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=name)
    torch.testing.assert_close(step.loss, F.cross_entropy(model(x), y))


@pytest.mark.parametrize("model_name", ["mnist-fc", "mnist-lc"])
def test_fixed_prediction_with_a_clamped_output_gives_backprop_of_the_squared_error(model_name):
    model = float64_model(model_name)
    x, y = batch(model, size=3, dtype=torch.float64)
    target = F.one_hot(y, 10).double()
    expected = backprop(model, x, lambda logits: 0.5 * (target - logits).pow(2).sum(1).mean())
    got, _ = rule_gradients("pc-fixed", model, x, y, output_energy="clamped")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_fixed_prediction_on_the_autoencoder_gives_backprop_gradients():
    model = float64_model("mnist-autoencoder")
    x, y = batch(model, size=2, dtype=torch.float64)
    expected = backprop(model, x, lambda out: 0.5 * (out - x.flatten(1)).pow(2).sum(1).mean())
    for output_energy in ("loss", "clamped"):  # the same energy for reconstruction
        got, _ = rule_gradients("pc-fixed", model, x, y, output_energy=output_energy)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_fixed_prediction_with_fewer_steps_reaches_exactly_the_top_layers():
    model = float64_model("mnist-fc")  # 6 layers
    x, y = batch(model, size=3, dtype=torch.float64)
    expected = backprop(model, x, lambda logits: F.cross_entropy(logits, y))
    got, _ = rule_gradients("pc-fixed", model, x, y, inference_steps=2)
    for index, (a, b) in enumerate(zip(got, expected)):  # weight, bias of layer index // 2 + 1
        if index // 2 + 1 >= 4:  # the output layer and the 2 below it: exact
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        else:
            assert not a.any()


def test_fixed_prediction_with_a_smaller_rate_converges_geometrically_to_backprop():
    model = float64_model("mnist-lc")
    x, y = batch(model, size=3, dtype=torch.float64)
    expected = flat(backprop(model, x, lambda logits: F.cross_entropy(logits, y)))
    angles = [angle(flat(rule_gradients("pc-fixed", model, x, y, inference_steps=steps, inference_rate=0.5)[0]),
                    expected) for steps in (3, 10, 30, 60)]
    assert all(a > b for a, b in zip(angles, angles[1:])) and angles[-1] < 1e-4, angles


# -- standard predictive coding --------------------------------------------------------------------------
def small(kind="fc", seed=0):
    """Small networks on which the inference converges in a few hundred steps."""
    hidden = {"fc": [LayerSpec("fc", 12)] * 3,
              "lc": [LayerSpec("lc", 3, 3, 2), LayerSpec("fc", 12)],
              "conv": [LayerSpec("conv", 3, 3, 2), LayerSpec("conv", 4, 3, 1), LayerSpec("fc", 12)]}[kind]
    torch.manual_seed(seed)
    model = build_network(f"small-{kind}", (1, 6, 6), hidden, 5).double()
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(4, 1, 6, 6, generator=generator, dtype=torch.float64)
    return model, x, torch.randint(0, 5, (4,), generator=generator)


def energy(model, values, x, y, gamma, clamped=False):
    """F = sum_{l<L} ½||v_l - f_l(v_{l-1})||² + gamma L(f_L(v_{L-1})), summed over the batch, by the blocks."""
    inputs = [x, *values]
    total = sum(0.5 * (v - block(z)).pow(2).sum() for v, block, z in zip(values, model.blocks, inputs))
    out = model.blocks[-1](inputs[-1])
    if clamped:
        return total + gamma * 0.5 * (F.one_hot(y, out.shape[1]).to(out.dtype) - out).pow(2).sum()
    return total + gamma * F.cross_entropy(out, y, reduction="sum")


@pytest.mark.parametrize("kind", ["fc", "lc", "conv"])
@pytest.mark.parametrize("clamped", [False, True])
def test_standard_update_is_the_energy_gradient_at_the_equilibrium(kind, clamped):
    model, x, y = small(kind)
    gamma = 0.5
    options = dict(inference_steps=600, inference_rate=0.3, output_weight=gamma,
                   output_energy="clamped" if clamped else "loss")
    rule = create_rule("pc", model, **options)
    with torch.no_grad():  # the value nodes where the inference stops
        forward = model.hidden_activations(x)
        _, _, values, _ = rule.inference([x, *forward[:-1]], y)
    values = [v.detach().requires_grad_(True) for v in values[1:]]
    total = energy(model, values, x, y, gamma, clamped)
    params = list(model.parameters())
    grads = torch.autograd.grad(total, [*values, *params])
    assert max(float(g.abs().max()) for g in grads[:len(values)]) < 1e-10  # dF/dv = 0: an equilibrium
    got, _ = rule_gradients("pc", model, x, y, **options)
    for a, b in zip(got, grads[len(values):]):
        torch.testing.assert_close(a, b / (len(x) * gamma), rtol=1e-9, atol=1e-12)


def test_standard_update_angle_to_backprop_falls_as_the_inference_converges():
    model, x, y = small("fc")
    expected = flat(backprop(model, x, lambda logits: F.cross_entropy(logits, y)))
    for gamma in (1.0, 0.1):
        angles = [angle(flat(rule_gradients("pc", model, x, y, inference_steps=steps, inference_rate=0.1,
                                            output_weight=gamma)[0]), expected) for steps in (2, 5, 20, 100, 400)]
        assert all(a > b for a, b in zip(angles, angles[1:])), (gamma, angles)


def test_standard_update_tends_to_backprop_as_the_output_weight_falls():
    model, x, y = small("fc")
    expected = flat(backprop(model, x, lambda logits: F.cross_entropy(logits, y)))
    angles = [angle(flat(rule_gradients("pc", model, x, y, inference_steps=600, inference_rate=0.3,
                                        output_weight=gamma)[0]), expected) for gamma in (1.0, 0.1, 0.01, 0.001)]
    assert all(a > b for a, b in zip(angles, angles[1:])) and angles[-1] < 0.1, angles


def test_no_inference_steps_train_only_the_output_layer_with_its_true_gradient():
    model = float64_model("mnist-fc")
    x, y = batch(model, size=3, dtype=torch.float64)
    expected = backprop(model, x, lambda logits: F.cross_entropy(logits, y))
    got, step = rule_gradients("pc", model, x, y, inference_steps=0)
    for a in got[:-2]:
        assert not a.any()
    for a, b in zip(got[-2:], expected[-2:]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    # F = gamma * (the summed loss) when no error has formed yet: its batch mean is the task loss
    torch.testing.assert_close(step.local_losses["energy"], step.loss)


def test_bad_options_and_modules_are_refused_by_name():
    model = create_model("mnist-fc")
    for options, word in (({"inference_rate": 0.0}, "inference_rate"), ({"output_weight": -1.0}, "output_weight"),
                          ({"inference_steps": -1}, "inference_steps"), ({"output_energy": "mse"}, "output_energy")):
        with pytest.raises(BiopropError, match=word):
            create_rule("pc", model, **options)
    with pytest.raises(BiopropError, match="'pc-fixed'.*bioprop Network"):
        create_rule("pc-fixed", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
