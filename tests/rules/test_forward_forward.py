"""Forward-Forward (rules/forward_only/forward_forward.py): label embedding, goodness, the per-layer
losses and gradients, and the label-sweep prediction against a hand computation on a network of two
hidden layers; evaluation, alignment and the planner go through the rule's own ``predict``."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bioprop.errors import BiopropError
from bioprop.experiments.plan import plan
from bioprop.models import create_model
from bioprop.rules import create_rule
from bioprop.training import alignment
from bioprop.training.evaluation import evaluate
from small_networks import fc_network
from synthetic_data import in_memory


def _network():
    return fc_network([12, 6, 5], classes=3)  # x (12) -> 6 -> 5 -> 3 (the readout)


def _data(n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, 12, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=generator)


def _embed(x, labels):
    v = x.flatten(1).clone()
    v[:, :3] = F.one_hot(labels, 3).double() * x.flatten(1).max(1, keepdim=True).values
    return v


def _rms_normalised(h):
    return h / (h.pow(2).mean(1, keepdim=True) + 1e-8).sqrt()


def test_layer_losses_and_gradients_match_a_hand_computation():
    network = _network()
    x, y = _data()
    rule = create_rule("ff", network, seed=0, threshold=0.4)
    wrong = (y + rule.global_integers(1, 3, len(y), "cpu", rule.generator("cpu", 0))) % 3  # the rule's draw
    assert (wrong != y).all()
    (W1, b1), (W2, b2), (W3, b3) = [(layer.weight, layer.bias) for layer in network.layers]
    step = rule.compute_gradients(x, y, ("forward",))

    positive, negative = _embed(x, y), _embed(x, wrong)
    h1p, h1n = torch.tanh(positive @ W1.T + b1), torch.tanh(negative @ W1.T + b1)
    g1p, g1n = h1p.pow(2).sum(1), h1n.pow(2).sum(1)  # goodness: the sum of squares
    loss1 = F.softplus(0.4 * 6 - g1p).mean() + F.softplus(g1n - 0.4 * 6).mean()
    h2p = torch.tanh(_rms_normalised(h1p).detach() @ W2.T + b2)  # the next layer sees ĥ, cut
    h2n = torch.tanh(_rms_normalised(h1n).detach() @ W2.T + b2)
    loss2 = F.softplus(0.4 * 5 - h2p.pow(2).sum(1)).mean() + F.softplus(h2n.pow(2).sum(1) - 0.4 * 5).mean()
    neutral = x.flatten(1).clone()
    neutral[:, :3] = x.flatten(1).max(1, keepdim=True).values / 3
    h2_neutral = torch.tanh(_rms_normalised(torch.tanh(neutral @ W1.T + b1)) @ W2.T + b2)
    readout = F.cross_entropy(_rms_normalised(h2_neutral).detach() @ W3.T + b3, y)

    torch.testing.assert_close(step.local_losses["goodness_loss/layer1"], loss1.detach())
    torch.testing.assert_close(step.local_losses["goodness_loss/layer2"], loss2.detach())
    torch.testing.assert_close(step.local_losses["readout_loss/layer3"], readout.detach())
    for loss, weights in ((loss1, [W1, b1]), (loss2, [W2, b2]), (readout, [W3, b3])):
        for parameter, expected in zip(weights, torch.autograd.grad(loss, weights)):
            torch.testing.assert_close(parameter.grad, expected)  # each layer learns from its own loss only


def test_prediction_tries_every_label_and_scores_goodness_per_unit():
    network = _network()
    x, y = _data()
    rule = create_rule("ff", network, seed=0)
    (W1, b1), (W2, b2) = [(layer.weight, layer.bias) for layer in network.layers[:2]]
    scores = []
    for label in range(3):
        h1 = torch.tanh(_embed(x, torch.full_like(y, label)) @ W1.T + b1)
        h2 = torch.tanh(_rms_normalised(h1) @ W2.T + b2)
        scores.append(h2.pow(2).sum(1) / 5)  # two hidden layers: the first one's goodness is left out
    with torch.no_grad():
        torch.testing.assert_close(rule.predict(x), torch.stack(scores, 1))
    step = rule.compute_gradients(x, y, ("forward",))
    torch.testing.assert_close(step.logits, torch.stack(scores, 1).detach())  # the running error: predict's
    readout = create_rule("ff", network, seed=0, prediction="readout")
    with torch.no_grad():
        torch.testing.assert_close(readout.predict(x), readout.readout(x))


def test_evaluation_scores_the_rules_own_prediction_not_the_networks():
    torch.manual_seed(0)
    network = create_model("mnist-fc")
    rule = create_rule("ff", network, seed=0)
    data = in_memory("mnist", n_train=10, n_test=200)
    x, y = next(iter(data.test.batches(200, shuffle=False)))
    with torch.no_grad():
        by_label_sweep = (rule.predict(x).argmax(1) != y).double().mean().item() * 100
        by_network = (network(x).argmax(1) != y).double().mean().item() * 100
    assert by_label_sweep != by_network
    result = evaluate(rule, data.test, batch_size=50)
    assert result["error"] == pytest.approx(by_label_sweep)
    assert evaluate(network, data.test, batch_size=50)["error"] == pytest.approx(by_network)


def test_alignment_differentiates_the_rules_prediction():
    torch.manual_seed(0)
    rule = create_rule("ff", create_model("mnist-fc"), seed=0)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    weights = rule.layer_weights()
    got = alignment.backprop_gradients(rule, x, y, weights)
    copied = copy.deepcopy(rule)
    loss = F.cross_entropy(copied.predict(x), y)
    expected = torch.autograd.grad(loss, list(copied.layer_weights().values()), allow_unused=True)
    for (name, value), want in zip(got.items(), expected):
        torch.testing.assert_close(value, torch.zeros_like(value) if want is None else want, msg=name)
    assert got["layer1"].abs().sum() > 0 and got["layer6"].abs().sum() == 0  # the readout takes no part


def test_the_planner_counts_one_pass_per_label_for_evaluation():
    batch = 8
    planned = plan("mnist-fc", "ff", batch_size=batch)
    hidden = 784 * 256 + 4 * 256 * 256  # multiply-adds of the hidden layers per example
    assert planned.own_predict and planned.steps[0].forward_flops == 2 * batch * (hidden + 256 * 10)
    assert planned.predict_flops == 10 * 2 * batch * hidden
    assert not plan("mnist-fc", "bp", batch_size=batch).own_predict


def test_refuses_other_tasks_and_too_small_inputs_by_name():
    with pytest.raises(BiopropError, match="'ff' cannot train a reconstruction task"):
        create_rule("ff", create_model("mnist-autoencoder"))
    with pytest.raises(BiopropError, match="embeds the label"):
        create_rule("ff", fc_network([2, 4], classes=3))
