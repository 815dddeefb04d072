"""Learning rules on the reconstruction task (the MNIST autoencoder, App. 5.5): the first target is the
input itself, DTP's penultimate target is a gradient step on ½||h_L - x||², every rule updates every
parameter, and a rule that cannot serve a task is refused by name."""

import pytest
import torch
from torch import nn

from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import RULES, create_rule, list_rules
from bioprop.rules.bp import Backprop
from bioprop.rules.target_prop.inverses import OutputInverse

from small_networks import ExactInverse, batch, fc_network


def autoencoder_network(width=4, depth=3):
    """A small FC autoencoder width -> ... -> width (tanh hidden, linear output), float64."""
    model = fc_network([width] * depth, classes=width)
    model.task, model.num_classes = "reconstruction", None
    return model


class ExactOutputInverse(ExactInverse):
    """f_L^{-1} of a linear output block, with the output inverse's interface."""

    def target_difference(self, u, best, units):
        return self(best) - self(u)


def make_rule(name, model, **options):
    if name == "ao-sdtp":
        options.setdefault("aux_units", 16)
    return create_rule(name, model, seed=3, **options)


def test_sdtp_first_target_is_the_input_and_its_inverse_reads_the_output():
    torch.manual_seed(0)
    model = create_model("mnist-autoencoder")
    rule = make_rule("sdtp", model)
    x, _ = batch(model, size=5)
    target = rule.task.target(x, None)
    h = [t.detach() for t in model.hidden_activations(x)]
    features = rule.output_features(h[-2], h[-1])
    assert torch.equal(features, h[-1])  # not softmax probabilities: the output itself
    assert torch.equal(rule.output_target(features, target), x.flatten(1))  # ĥ_L = argmin L = x
    g = rule.inverse(len(h) - 1)
    torch.testing.assert_close(rule.targets(h, target)[-1], h[-2] - g(h[-1]) + g(x.flatten(1)), rtol=1e-5, atol=1e-5)


def test_sdtp_with_exact_inverses_targets_the_activities_that_reconstruct_x():
    """x = F(z) for some z: with g_l = f_l^{-1}, ĥ_{L-1} = f_L^{-1}(x) and every ĥ_l = h_l(z)."""
    model = autoencoder_network()
    rule = make_rule("sdtp", model)
    last = len(model.blocks) - 1
    for index in rule.inverse_indices():
        inverse = ExactOutputInverse if index == last else ExactInverse
        rule.inverses[rule.layer_name(index)] = inverse(model.blocks[index])
    z, _ = batch(model, size=6, dtype=torch.float64)
    with torch.no_grad():
        x = model(z).reshape(z.shape)  # an input the network can reproduce exactly
        expected = model.hidden_activations(z)[:-1]
        h = model.hidden_activations(x)
    targets = rule.targets(h, rule.task.target(x, None))
    for target, wanted in zip(targets, expected):
        torch.testing.assert_close(target, wanted)
    torch.testing.assert_close(model.blocks[-1](targets[-1]), x.flatten(1))
    assert not torch.allclose(h[-1], x.flatten(1))


def test_output_inverse_target_difference_with_a_dense_target():
    torch.manual_seed(0)
    g = OutputInverse(6 + 3, (5,), torch.empty(0))
    u, best = torch.randn(4, 9), torch.randn(4, 6)
    replaced = torch.cat([best, u[:, 6:]], 1)
    torch.testing.assert_close(g.target_difference(u, best, 6), g(replaced) - g(u), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction, scale", [("sum", 1.0), ("mean", 1.0 / 6)])
def test_dtp_penultimate_target_is_a_gradient_step_on_the_squared_error(reduction, scale):
    model = autoencoder_network(width=5)
    rule = make_rule("dtp", model, alpha=0.3, target_reduction=reduction)
    x, _ = batch(model, size=6, dtype=torch.float64)
    h = [t.detach() for t in model.hidden_activations(x)]
    penultimate = h[-2].clone().requires_grad_()
    loss = 0.5 * (model.blocks[-1](penultimate) - x.flatten(1)).pow(2).sum()  # ½||h_L - x||², summed
    (gradient,) = torch.autograd.grad(loss, penultimate)
    torch.testing.assert_close(rule.targets(h, rule.task.target(x, None))[-1], h[-2] - 0.3 * scale * gradient)


def test_other_first_targets_on_reconstruction():
    torch.manual_seed(0)
    model = create_model("mnist-autoencoder")
    x, _ = batch(model, size=4)
    target = x.flatten(1)
    h = [t.detach() for t in model.hidden_activations(x)]
    tp = make_rule("tp", model)
    torch.testing.assert_close(tp.targets(h, target)[-1], tp.inverse(len(h) - 1)(target))  # ĥ_{L-1} = g_L(x)
    ao = make_rule("ao-sdtp", model)
    z = torch.tanh(h[-2] @ ao.aux_weight.t())  # the same z in both calls
    g = ao.inverse(len(h) - 1)
    expected = h[-2] - g(torch.cat([h[-1], z], 1)) + g(torch.cat([target, z], 1))
    torch.testing.assert_close(ao.targets(h, target)[-1], expected, rtol=1e-5, atol=1e-5)
    for name in ("drl", "l-drl"):  # t_L = s_L - β (s_L - x)
        rule = make_rule(name, model, beta=0.5)
        torch.testing.assert_close(rule.logit_target(h[-1], target), h[-1] - 0.5 * (h[-1] - target))


@pytest.mark.parametrize("name", list_rules())
def test_every_rule_updates_every_parameter_of_the_autoencoder(name):
    if RULES.get(name).tasks is not None and "reconstruction" not in RULES.get(name).tasks:
        pytest.skip(f"{name} serves only {', '.join(RULES.get(name).tasks)} (refused by name: "
                    f"test_a_rule_that_cannot_serve_a_task_is_refused_by_name)")
    torch.manual_seed(0)
    model = create_model("mnist-autoencoder")
    rule = make_rule(name, model)
    x, y = batch(model, size=4)
    step = rule.compute_gradients(x, y, rule.groups)
    with torch.no_grad():  # the rule's prediction: the network's output, or EP's free phase
        expected_loss = 0.5 * (rule.predict(x) - x.flatten(1)).pow(2).sum(1).mean()
    torch.testing.assert_close(step.loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert step.logits.shape == (4, 784)
    trained = [p for group in rule.parameter_groups().values() for p in group]
    assert trained
    for parameter_name, parameter in rule.named_parameters():
        if any(parameter is p for p in trained):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (name, parameter_name)


def test_bp_on_the_autoencoder_is_the_gradient_of_the_squared_error():
    torch.manual_seed(0)
    model = create_model("mnist-autoencoder")
    x, y = batch(model, size=3)
    create_rule("bp", model).compute_gradients(x, y, ("forward",))
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    (0.5 * (model(x) - x.flatten(1)).pow(2).sum() / 3).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)


def test_a_rule_that_cannot_serve_a_task_is_refused_by_name():
    class ClassifierOnly(Backprop):
        name = "classifier-only"
        tasks = ("classification",)

    ClassifierOnly(create_model("mnist-fc"))  # its task: accepted
    with pytest.raises(BiopropError, match=r"rule 'classifier-only' cannot train a reconstruction task .*"
                                           r"mnist-autoencoder.*serves only classification"):
        ClassifierOnly(create_model("mnist-autoencoder"))


def test_a_users_module_declares_its_task():
    class TinyAutoencoder(nn.Module):
        task = "reconstruction"

        def __init__(self):
            super().__init__()
            self.encode, self.decode = nn.Linear(4, 2), nn.Linear(2, 4)

        def forward(self, x):
            return self.decode(torch.tanh(self.encode(x.flatten(1))))

    module = TinyAutoencoder()
    rule = create_rule("fa", module)
    x = torch.randn(3, 1, 1, 4)
    step = rule.compute_gradients(x, torch.zeros(3, dtype=torch.long), ("forward",))
    torch.testing.assert_close(step.loss, 0.5 * (module(x) - x.flatten(1)).pow(2).sum(1).mean().detach())
