"""The target-propagation rules beyond the paper: l-drl (Ernoult et al. 2022), drl (Meulemans et al.
2020) and the BP/DTP hybrid (Bartunov et al. 2018, App. 5.6). Known answers (L-DRL by hand, exact
inverses make DRL vanish, transposed-Jacobian feedback is backprop, hybrid at gamma 0 / 1),
locality, groups, determinism, learning, options, and the refusal of layer types without inverse."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.models.network import Block, Network
from bioprop.rules import RULES, create_rule, list_rules
from bioprop.rules.base import searchable_options, task_loss
from bioprop.rules.target_prop.base import TargetPropagationRule, gaussian_noise
from bioprop.rules.target_prop.drl import local_difference_reconstruction_loss
from small_networks import ExactInverse, batch, fc_network

NEW_RULES = ["l-drl", "drl", "hybrid"]
LAYER_TYPE_MODELS = ["mnist-fc", "mnist-lc", "mnist-conv"]


def build(rule_name, model_name="mnist-fc", seed=0, **options):
    torch.manual_seed(seed)
    return create_rule(rule_name, create_model(model_name), seed=seed, **options)


class LinearFeedback(nn.Module):
    """G(h) = h V + c with a given V of the forward weight's shape (out, in)."""

    def __init__(self, weight, bias=None):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(torch.zeros(weight.shape[1], dtype=weight.dtype) if bias is None else bias.clone())

    def forward(self, h):
        return h @ self.weight + self.bias


def transposed_jacobian_feedback(rule):
    """Every feedback G_l(h) = h W_l: the transposed Jacobian of a linear block (reference §1.6)."""
    for index in rule.inverse_indices():
        rule.inverses[rule.layer_name(index)] = LinearFeedback(rule.model.blocks[index].layer.weight.detach())


def backprop_gradients(model, x, y):
    model.zero_grad()
    task_loss(model(x), y).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return grads


# -- locality, groups, determinism: every new rule x layer type --------------------------------------
@pytest.mark.parametrize("rule_name", NEW_RULES)
@pytest.mark.parametrize("model_name", LAYER_TYPE_MODELS)
def test_each_local_loss_reaches_only_its_own_parameters(rule_name, model_name):
    rule = build(rule_name, model_name, drl_damping=0.5) if rule_name == "drl" else build(rule_name, model_name)
    model = rule.model
    everything = list(rule.parameters())
    owner = {id(p): ("forward", i) for i, block in enumerate(model.blocks) for p in block.parameters()}
    owner.update({id(p): ("inverse", i) for i in rule.inverse_indices() for p in rule.inverse(i).parameters()})
    assert len(owner) == len(everything)
    losses = rule.local_losses(*batch(model, size=2), forward=True, inverse=True)
    assert sorted(losses.forward) == list(range(len(model.blocks)))
    output_inverse = rule_name != "hybrid"  # l-drl and drl invert the classifier, from the logits
    assert sorted(losses.inverse) == list(range(1, len(model.blocks) - (not output_inverse)))
    for group, per_block in (("forward", losses.forward), ("inverse", losses.inverse)):
        for index, loss in per_block.items():
            grads = torch.autograd.grad(loss, everything, allow_unused=True, retain_graph=True)
            for parameter, grad in zip(everything, grads):
                mine = owner[id(parameter)] == (group, index)
                assert (grad is not None) == mine, (group, index, owner[id(parameter)])


@pytest.mark.parametrize("rule_name", NEW_RULES)
@pytest.mark.parametrize("model_name", LAYER_TYPE_MODELS)
def test_every_parameter_of_the_trained_groups_and_only_those_gets_a_gradient(rule_name, model_name):
    rule = build(rule_name, model_name)
    groups = rule.parameter_groups()
    assert tuple(groups) == ("forward", "inverse") and rule.passes() == (("forward", "inverse"),)
    assert sum(map(len, groups.values())) == len(list(rule.parameters()))
    x, y = batch(rule.model, size=2)
    for trained in (("forward",), ("inverse",), ("forward", "inverse")):
        rule.zero_grad(set_to_none=True)
        step = rule.compute_gradients(x, y, trained)
        assert torch.isfinite(step.loss) and step.logits.shape == (2, 10)
        for group, params in groups.items():
            for parameter in params:
                if group in trained:
                    assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (trained, group)
                    assert torch.isfinite(parameter.grad).all()
                else:
                    assert parameter.grad is None, (trained, group)


@pytest.mark.parametrize("rule_name", NEW_RULES)
@pytest.mark.parametrize("model_name", LAYER_TYPE_MODELS)
def test_same_seed_gives_the_same_gradients(rule_name, model_name):
    results = []
    for _ in range(2):
        rule = build(rule_name, model_name, seed=2)
        x, y = batch(rule.model, size=2, seed=5)
        torch.manual_seed(123)  # the noise comes from torch's generator
        step = rule.compute_gradients(x, y, ("forward", "inverse"))
        results.append(([p.grad.clone() for p in rule.parameters()], step.local_losses))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert results[0][1].keys() == results[1][1].keys()


@pytest.mark.parametrize("rule_name", NEW_RULES)
def test_alternating_schedule_trains_the_inverses_then_the_forward_weights(rule_name):
    rule = build(rule_name, "mnist-lc", schedule="alternating")
    assert rule.passes() == (("inverse",), ("forward",))
    x, y = batch(rule.model, size=2)
    groups = rule.parameter_groups()
    for trained in rule.passes():
        rule.zero_grad(set_to_none=True)
        step = rule.compute_gradients(x, y, trained)
        assert all(name.startswith(f"{trained[0]}_loss/") for name in step.local_losses)
        for group, params in groups.items():
            assert all((p.grad is not None) == (group in trained) for p in params)


@pytest.mark.parametrize("rule_name", NEW_RULES)
def test_a_few_adam_steps_on_a_fixed_batch_reduce_the_loss(rule_name):
    rule = build(rule_name, "mnist-fc")
    x, y = batch(rule.model, size=32, seed=1)
    optimizers = [torch.optim.Adam(params, lr=1e-3) for params in rule.parameter_groups().values()]
    losses = []
    for _ in range(8):
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        losses.append(rule.compute_gradients(x, y, ("forward", "inverse")).loss.item())
        for optimizer in optimizers:
            optimizer.step()
    with torch.no_grad():
        final = task_loss(rule(x), y).item()
    assert final < losses[0] - 0.05, (rule_name, losses, final)


# -- L-DRL: the loss by hand ---------------------------------------------------------------------------
def test_l_drl_loss_of_a_tiny_linear_example_by_hand():
    """F(x) = x W^T + b, G(h) = h V + c: G(F(x+dx)) - G(F(x)) = dx W^T V, G(F(x)+dy) - G(F(x)) = dy V.
    Example 1: dx = (1, 0), dy = (0, 1): -2 * 0.5 + 2 = 1. Example 2: dx = (0, 1), dy = (1, 1):
    dx W^T V = (2, -1), -2 * (-1) + (1.5² + 1) = 5.25. Batch mean: 3.125."""
    W = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([0.3, -0.7], dtype=torch.float64)
    V = torch.tensor([[0.5, 0.0], [1.0, -1.0]], dtype=torch.float64)
    g = LinearFeedback(V, bias=torch.tensor([0.2, 0.1], dtype=torch.float64))
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]], dtype=torch.float64)
    dx = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    dy = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    forward = lambda inputs: inputs @ W.t() + b  # noqa: E731
    loss = local_difference_reconstruction_loss(g, forward(x), forward(x + dx), dx, dy)
    assert loss.item() == pytest.approx(3.125, abs=1e-12)
    # its gradient in V: d/dV [-2 dx W^T V dx^T + ||dy V||²], averaged over the two examples
    loss.backward()
    expected = sum(-2 * torch.outer(dx[i] @ W.t(), dx[i]) + 2 * torch.outer(dy[i], dy[i] @ V) for i in range(2)) / 2
    torch.testing.assert_close(g.weight.grad, expected)
    assert g.bias.grad.abs().max().item() < 1e-12  # c cancels in every difference


def test_l_drl_rule_computes_that_loss_for_every_layer_with_its_own_noise():
    model = fc_network([3, 3, 3], activation="identity", classes=3)
    rule = create_rule("l-drl", model, noise=0.3)
    torch.manual_seed(0)
    for index in rule.inverse_indices():  # includes the classifier's feedback (from the logits)
        rule.inverses[rule.layer_name(index)] = LinearFeedback(torch.randn(3, 3, dtype=torch.float64))
    x, _ = batch(model, size=5, dtype=torch.float64)
    h = [t.detach() for t in model.hidden_activations(x)]
    assert rule.inverse_indices() == [1, 2]
    torch.manual_seed(11)
    losses = rule.inverse_losses(h)
    torch.manual_seed(11)
    for index in (1, 2):
        dx, dy = gaussian_noise(h[index - 1], 0.3), gaussian_noise(h[index], 0.3)  # drawn in this order
        W, V = model.blocks[index].layer.weight, rule.inverse(index).weight
        expected = (-2 * ((dx @ W.t() @ V) * dx).sum(1) + (dy @ V).pow(2).sum(1)).mean()
        torch.testing.assert_close(losses[index], expected)


def test_l_drl_trains_the_feedback_jacobian_toward_the_transposed_forward_jacobian():
    """E[L-DRL] = σ² (||V - W||² - ||W||²) for G(h) = h V: its minimum is G = J_F^T (V = W)."""
    torch.manual_seed(0)
    W = torch.randn(3, 4) / 2  # F: 4 -> 3
    forward = lambda inputs: inputs @ W.t()  # noqa: E731
    g = LinearFeedback(torch.randn(3, 4))
    optimizer = torch.optim.Adam(g.parameters(), lr=0.02)
    for _ in range(400):
        x = torch.randn(256, 4)
        dx, dy = 0.1 * torch.randn(256, 4), 0.1 * torch.randn(256, 3)
        optimizer.zero_grad()
        local_difference_reconstruction_loss(g, forward(x), forward(x + dx), dx, dy).backward()
        optimizer.step()
    torch.testing.assert_close(g.weight.detach(), W, atol=0.05, rtol=0)


def test_noise_samples_average_the_feedback_loss_over_independent_draws():
    rule = build("l-drl", noise_samples=3)
    single = build("l-drl")
    h = [t.detach() for t in rule.model.hidden_activations(batch(rule.model, size=3)[0])]
    torch.manual_seed(4)
    averaged = rule.inverse_losses(h)
    torch.manual_seed(4)
    draws = [single.inverse_losses(h) for _ in range(3)]
    for index, loss in averaged.items():
        torch.testing.assert_close(loss, sum(d[index] for d in draws) / 3)


# -- the targets and forward losses of l-drl and drl ---------------------------------------------------
@pytest.mark.parametrize("rule_name", ["l-drl", "drl"])
@pytest.mark.parametrize("model_name", LAYER_TYPE_MODELS)
def test_logit_target_rules_follow_their_target_formulas(rule_name, model_name):
    rule = build(rule_name, model_name, beta=0.4)
    x, y = batch(rule.model, size=3)
    h = [t.detach() for t in rule.model.hidden_activations(x)]
    logit_target = h[-1] - 0.4 * (torch.softmax(h[-1], 1) - F.one_hot(y, 10).float())
    torch.testing.assert_close(rule.logit_target(h[-1], y), logit_target)
    targets = rule.targets(h, y)
    above = [*targets, logit_target]
    for index in range(len(h) - 1, 0, -1):  # t_{l-1} = s_{l-1} + G_l(t_l) - G_l(s_l), the classifier's too
        g = rule.inverse(index)
        expected = h[index - 1] + g(above[index]) - g(h[index])
        torch.testing.assert_close(targets[index - 1], expected, rtol=1e-5, atol=1e-5)
    losses = rule.local_losses(x, y, forward=True, inverse=False)
    last = len(h) - 1
    torch.testing.assert_close(losses.forward[last], 0.5 * (h[-1] - logit_target).pow(2).sum(1).mean())
    torch.testing.assert_close(losses.task_loss, F.cross_entropy(h[-1], y))


@pytest.mark.parametrize("rule_name", ["l-drl", "drl"])
def test_logit_target_rules_with_transposed_jacobian_feedback_are_backprop_times_beta(rule_name):
    """Linear blocks, G_l(h) = h W_l: t_l - s_l = -β dCE_sum/ds_l at every layer, so every block's
    gradient, the classifier's included (½||s_L - t_L||²), is β times backprop's (batch-mean loss)."""
    model = fc_network([6, 5, 4, 4], activation="identity")
    beta, size = 0.3, 7
    rule = create_rule(rule_name, model, beta=beta)
    transposed_jacobian_feedback(rule)
    x, y = batch(model, size=size, dtype=torch.float64)
    hidden = model.hidden_activations(x)
    bp_shift = torch.autograd.grad(F.cross_entropy(hidden[-1], y, reduction="sum"), hidden[:-1])
    h = [t.detach() for t in hidden]
    for index, target in enumerate(rule.targets(h, y)):
        torch.testing.assert_close(target - h[index], -beta * bp_shift[index])
    bp = backprop_gradients(model, x, y)
    rule.compute_gradients(x, y, ("forward",))
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, beta * bp[name], msg=name)


# -- DRL -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_drl_loss_follows_its_formula(damping):
    """L_l = ½||g_diff(f_{l..L}(h_{l-1} + δx)) - h_{l-1} - δx||² + λ ½||g_diff(s_L + δy) - h_{l-1}||²."""
    model = fc_network([4, 4, 4, 4], classes=3)
    rule = create_rule("drl", model, noise=0.1, drl_damping=damping)
    x, _ = batch(model, size=5, dtype=torch.float64)
    h = [t.detach() for t in model.hidden_activations(x)]
    last = len(h) - 1

    def chain(target, stop):  # the difference chain from the logits down to a target of h[stop - 1]
        for k in range(last, stop - 1, -1):
            g = rule.inverse(k)
            target = h[k - 1] + g(target) - g(h[k])
        return target

    torch.manual_seed(3)
    losses = rule.inverse_losses(h)
    torch.manual_seed(3)
    for index in rule.inverse_indices():
        dx = gaussian_noise(h[index - 1], 0.1)
        noisy = h[index - 1] + dx
        for block in model.blocks[index:]:
            noisy = block(noisy)
        expected = 0.5 * (chain(noisy, index) - h[index - 1] - dx).pow(2).sum(1).mean()
        if damping:
            dy = gaussian_noise(h[last], 0.1)
            expected = expected + damping * 0.5 * (chain(h[last] + dy, index) - h[index - 1]).pow(2).sum(1).mean()
        torch.testing.assert_close(losses[index], expected, rtol=1e-6, atol=1e-9)


def test_drl_loss_vanishes_for_exact_inverses():
    """With G_l = f_l^{-1} the difference chain undoes the forward pass: g_diff(f(h + δ)) = h + δ."""
    model = fc_network([5, 5, 5, 5], classes=5)
    rule = create_rule("drl", model, noise=0.05)
    for index in rule.inverse_indices():
        rule.inverses[rule.layer_name(index)] = ExactInverse(model.blocks[index])
    h = [t.detach() for t in model.hidden_activations(batch(model, size=4, dtype=torch.float64)[0])]
    losses = rule.inverse_losses(h)
    assert sorted(losses) == [1, 2, 3]  # the classifier (identity, square) included
    assert all(loss.item() < 1e-20 for loss in losses.values()), losses


# -- the hybrid ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["mnist-fc", "mnist-lc"])
def test_hybrid_at_gamma_zero_is_dtp_bit_for_bit(model_name):
    results = []
    for rule_name, options in (("dtp", {}), ("hybrid", {"gamma": 0.0})):
        rule = build(rule_name, model_name, seed=1, diagnostics_every=1, **options)
        x, y = batch(rule.model, size=4, seed=2)
        torch.manual_seed(9)
        step = rule.compute_gradients(x, y, ("forward", "inverse"))
        results.append(([p.grad for p in rule.parameters()], step))
    (dtp_grads, dtp), (hybrid_grads, hybrid) = results
    assert len(dtp_grads) == len(hybrid_grads)
    for a, b in zip(dtp_grads, hybrid_grads):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert torch.equal(dtp.loss, hybrid.loss) and dtp.diagnostics == hybrid.diagnostics


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_hybrid_at_gamma_one_is_backprop_on_a_tanh_network(reduction):
    """γ = 1: ĥ_l - h_l = -α dL/dh_l with the true Jacobians (any activation), so each hidden block's
    local gradient is α (α/B for 'mean') times backprop's and the classifier's is backprop's."""
    model = fc_network([6, 5, 4, 4], activation="tanh")
    alpha, size = 0.2, 7
    rule = create_rule("hybrid", model, gamma=1.0, alpha=alpha, target_reduction=reduction)
    scale = alpha if reduction == "sum" else alpha / size
    x, y = batch(model, size=size, dtype=torch.float64)
    hidden = model.hidden_activations(x)
    bp_shift = torch.autograd.grad(F.cross_entropy(hidden[-1], y, reduction="sum"), hidden[:-1])
    h = [t.detach() for t in hidden]
    for index, target in enumerate(rule.targets(h, y)):
        torch.testing.assert_close(target - h[index], -scale * bp_shift[index])
    bp = backprop_gradients(model, x, y)
    rule.compute_gradients(x, y, ("forward",))
    last = len(model.blocks) - 1
    for name, parameter in model.named_parameters():
        factor = 1.0 if name.startswith(f"blocks.{last}.") else scale
        torch.testing.assert_close(parameter.grad, factor * bp[name], msg=name)


@pytest.mark.parametrize("model_name", ["mnist-lc", "mnist-conv"])
def test_hybrid_at_gamma_one_gives_backprop_targets_for_lc_and_conv_layers(model_name):
    torch.manual_seed(0)
    model = create_model(model_name).double()
    rule = create_rule("hybrid", model, gamma=1.0, alpha=0.1)
    x, y = batch(model, size=2, dtype=torch.float64)
    hidden = model.hidden_activations(x)
    bp_shift = torch.autograd.grad(F.cross_entropy(hidden[-1], y, reduction="sum"), hidden[:-1])
    h = [t.detach() for t in hidden]
    for index, target in enumerate(rule.targets(h, y)):
        torch.testing.assert_close(target - h[index], -0.1 * bp_shift[index])


@pytest.mark.parametrize("model_name", LAYER_TYPE_MODELS)
def test_hybrid_targets_mix_the_transposed_jacobian_and_the_learned_inverse(model_name):
    rule = build("hybrid", model_name, gamma=0.3)
    x, y = batch(rule.model, size=2)
    h = [t.detach() for t in rule.model.hidden_activations(x)]
    targets = rule.targets(h, y)
    for index in range(1, len(targets)):
        shift = targets[index] - h[index]
        _, bp = torch.autograd.functional.vjp(rule.model.blocks[index], h[index - 1], shift)
        g = rule.inverse(index)
        expected = h[index - 1] + 0.3 * bp + 0.7 * (g(targets[index]) - g(h[index]))
        torch.testing.assert_close(targets[index - 1], expected, rtol=1e-5, atol=1e-5)


# -- diagnostics, options, presets -----------------------------------------------------------------------
@pytest.mark.parametrize("rule_name", NEW_RULES)
def test_diagnostics_report_every_layer(rule_name):
    rule = build(rule_name, diagnostics_every=1, **({"gamma": 1.0} if rule_name == "hybrid" else {}))
    diagnostics = rule.compute_gradients(*batch(rule.model, size=3), ("forward", "inverse")).diagnostics
    inverted = range(2, 7) if rule_name != "hybrid" else range(2, 6)
    assert {f"target_angle/layer{l}" for l in range(1, 6)} <= set(diagnostics)
    assert {f"reconstruction_error/layer{l}" for l in inverted} <= set(diagnostics)
    assert {f"inverse_loss/layer{l}" for l in inverted} <= set(diagnostics)
    assert all(math.isfinite(v) for v in diagnostics.values())
    if rule_name == "hybrid":  # gamma 1: backprop's targets at every layer
        assert all(diagnostics[f"target_angle/layer{l}"] < 0.01 for l in range(1, 6))


def test_declared_classes_options_and_search_space():
    for name in NEW_RULES:
        cls = RULES.get(name)
        assert cls.groups == ("forward", "inverse") and cls.preset_column == "dtp-parallel"
        assert issubclass(cls, TargetPropagationRule)
        assert searchable_options(name)["noise"] == ("uniform", 0.01, 0.3)
    assert searchable_options("hybrid")["gamma"] == ("uniform", 0.0, 1.0)
    assert searchable_options("hybrid")["alpha"] == ("uniform", 0.01, 0.2)
    for name in ("l-drl", "drl"):
        options = RULES.get(name).Options()
        assert options.beta == 0.7 and options.noise_samples == 1
    assert RULES.get("drl").Options().drl_damping == 0.0 and RULES.get("hybrid").Options().gamma == 0.5


@pytest.mark.parametrize("rule_name,options,named", [
    ("l-drl", {"beta": 0.0}, "beta"),
    ("drl", {"beta": float("nan")}, "beta"),
    ("l-drl", {"noise": 0.0}, "noise"),
    ("drl", {"noise_samples": 0}, "noise_samples"),
    ("l-drl", {"noise_samples": 1.5}, "noise_samples"),
    ("l-drl", {"inverse_loss": "denoising"}, "inverse_loss"),
    ("drl", {"drl_damping": -0.1}, "drl_damping"),
    ("l-drl", {"drl_damping": 0.1}, "drl_damping"),  # not an l-drl option
    ("l-drl", {"alpha": 0.1}, "alpha"),  # no gradient step: the first target is on the logits
    ("hybrid", {"gamma": 1.5}, "gamma"),
    ("hybrid", {"gamma": -0.1}, "gamma"),
    ("hybrid", {"alpha": 0.0}, "alpha"),
    ("hybrid", {"schedule": "sometimes"}, "schedule"),
])
def test_bad_options_name_the_option(rule_name, options, named):
    with pytest.raises(BiopropError, match=named):
        create_rule(rule_name, create_model("mnist-fc"), **options)


# -- layer types without an inverse are refused, by every target-propagation rule --------------------------
TP_RULES = [name for name in list_rules() if issubclass(RULES.get(name), TargetPropagationRule)]


def network_with(layer, position):
    """mnist-fc-like 3-block network with ``layer`` as block ``position`` (0: first, 1: hidden)."""
    first = layer if position == 0 else nn.Linear(784, 16)
    second = layer if position == 1 else nn.Linear(16, 16)
    blocks = [Block(first, flatten=position != 0), Block(second), Block(nn.Linear(16, 10), "identity", flatten=True)]
    return Network(blocks, (1, 28, 28), 10)


@pytest.mark.parametrize("rule_name", TP_RULES)
@pytest.mark.parametrize("position", [0, 1])
def test_layer_types_without_an_inverse_are_refused_by_name(rule_name, position):
    assert {"tp", "dtp", "sdtp", "ao-sdtp", "l-drl", "drl", "hybrid"} <= set(TP_RULES)
    layer = nn.Conv2d(1, 2, 3) if position == 0 else nn.Bilinear(16, 16, 16)  # a plain Conv2d: no SAME padding
    kind = type(layer).__name__
    with pytest.raises(BiopropError, match=rf"rule '{rule_name}' has no inverse for layer type {kind} "
                                           rf"\(layer{position + 1}\).*supports: Linear, Conv2dSame"):
        create_rule(rule_name, network_with(layer, position))


@pytest.mark.parametrize("rule_name", TP_RULES)
def test_models_that_are_not_networks_are_refused_by_name(rule_name):
    with pytest.raises(BiopropError, match=rf"rule '{rule_name}' needs a bioprop Network.*got Sequential"):
        create_rule(rule_name, nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    output = Network([Block(nn.Linear(784, 16), flatten=True), Block(nn.Bilinear(16, 16, 10), "identity")],
                     (1, 28, 28), 10)
    with pytest.raises(BiopropError, match=rf"rule '{rule_name}' needs a fully-connected output layer.*Bilinear"):
        create_rule(rule_name, output)


# -- the command line ---------------------------------------------------------------------------------------
def test_cli_flags_exist(capsys):
    from bioprop.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--beta", "--noise-samples", "--drl-damping", "--gamma"):
        assert flag in text, flag


def test_cli_trains_l_drl_alternating_on_real_mnist(tmp_path, shared_data, capsys):
    import json

    from bioprop.cli import main

    out = tmp_path / "run"
    status = main(["train", "--data", "mnist", "--data-dir", str(shared_data), "--model", "mnist-fc", "--rule", "l-drl",
                   "--schedule", "alternating", "--epochs", "1", "--batch-size", "50", "--limit-batches", "3",
                   "--limit-eval-batches", "1", "--beta", "0.5", "--noise-samples", "2", "--diagnostics-every", "2",
                   "--no-progress", "--out", str(out), "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["rule_options"] == {"schedule": "alternating", "beta": 0.5, "noise_samples": 2,
                                      "diagnostics_every": 2}
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    inverse_pass, forward_pass = row["passes"]
    assert "reconstruction_error/layer6" in inverse_pass["diagnostics"]  # the classifier's feedback, from the logits
    assert "forward_loss/layer1" in forward_pass["diagnostics"]
