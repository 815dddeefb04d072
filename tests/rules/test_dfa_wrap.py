"""DFA on any nn.Module: the error is delivered at the outputs of named submodules (known answers
against autograd on a plain copy and against a hand computation), training works, true_backprop is
BP, bad names and crossing skips are refused, the feedback matrix is state and is reproducible."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bioprop
from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import create_rule
from bioprop.rules.base import task_loss


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    input_shape, num_classes = (3, 32, 32), 10

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = Residual(8)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.stage2 = Residual(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


DELIVER = ["stem", "stage1", "stage2"]


def data(size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 32, 32, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def wrapped(seed=0, deliver_at=DELIVER):
    """(the rule wrapping a SmallResNet, a plain copy of the network)."""
    torch.manual_seed(0)
    net = SmallResNet()
    plain = copy.deepcopy(net)
    assert bioprop.wrap(net, rule="dfa", deliver_at=deliver_at, seed=seed) is net  # wrap returns the module
    return bioprop.rule_of(net), plain


def test_gradients_below_each_delivery_point_are_the_projected_error_back_propagated():
    rule, plain = wrapped()
    # drawn at wrap time (input_shape declared); as wide as the largest delivery point (stem, stage1)
    assert rule.feedback_matrix.shape == (10 + 2, 8 * 32 * 32)
    x, y = data()
    task_loss(rule(x), y).backward()
    got = grads(rule.model)
    assert all(g.abs().sum() > 0 for g in got.values())
    # the known answer, from a plain copy: each segment's parameters get grad(h_k, B_k e), the top the true grad
    outputs = {}
    for name in DELIVER:
        getattr(plain, name).register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
    logits = plain(x)
    loss = task_loss(logits, y)
    (error,) = torch.autograd.grad(loss, logits, retain_graph=True)
    segments = {"stem": ["stem"], "stage1": ["stage1"], "stage2": ["down", "stage2"]}
    for k, name in enumerate(DELIVER):
        params = [(n, p) for n, p in plain.named_parameters() if n.split(".")[0] in segments[name]]
        signal = (error @ rule.feedback_weight(k)).reshape(outputs[name].shape)
        expected = torch.autograd.grad(outputs[name], [p for _, p in params], signal, retain_graph=True)
        for (n, _), e in zip(params, expected):
            torch.testing.assert_close(got[n], e, rtol=1e-4, atol=1e-6)
    top = torch.autograd.grad(loss, [plain.fc.weight, plain.fc.bias])
    torch.testing.assert_close(got["fc.weight"], top[0])
    torch.testing.assert_close(got["fc.bias"], top[1])


def test_linear_toy_module_gets_the_hand_computed_dfa_update():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    rule = bioprop.rule_of(bioprop.wrap(net, rule="dfa", deliver_at="0", seed=3))
    assert rule.feedback_matrix is None  # no input_shape: drawn at the first forward
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    task_loss(rule(x), y).backward()
    h = x @ net[0].weight.detach().t() + net[0].bias.detach()
    logits = h @ net[1].weight.detach().t() + net[1].bias.detach()
    error = (torch.softmax(logits, 1) - F.one_hot(y, 3)) / len(y)
    M = 2 * torch.rand(3, 5, generator=rule.layer_generator(0)) - 1
    delta = error @ (M * (6 / (3 + 5)) ** 0.5)
    torch.testing.assert_close(net[0].weight.grad, delta.t() @ x)
    torch.testing.assert_close(net[0].bias.grad, delta.sum(0))
    torch.testing.assert_close(net[1].weight.grad, error.t() @ h)


def test_training_the_wrapped_resnet_reduces_the_loss():
    rule, _ = wrapped()
    optimizer = torch.optim.Adam(rule.parameters(), lr=1e-2)
    x, y = data(16)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        losses.append(rule.compute_gradients(x, y, ("forward",)).loss.item())
        optimizer.step()
    assert losses[-1] < 0.9 * losses[0], losses


def test_true_backprop_gives_backprops_exact_gradients():
    rule, plain = wrapped()
    x, y = data()
    with rule.true_backprop():
        task_loss(rule(x), y).backward()
    task_loss(plain(x), y).backward()
    bp, got = grads(plain), grads(rule.model)
    assert all(torch.equal(got[n], bp[n]) for n in bp)
    rule.zero_grad()
    task_loss(rule(x), y).backward()  # the cut is back after the context
    assert not torch.allclose(grads(rule.model)["stem.0.weight"], bp["stem.0.weight"])


def test_layer_weights_by_module_name():
    rule, _ = wrapped()
    assert set(rule.layer_weights()) == {"stem.0", "stage1.conv1", "stage1.conv2", "down.0", "stage2.conv1",
                                         "stage2.conv2", "fc"}


@pytest.mark.parametrize("deliver_at, message", [
    (["stage3"], "SmallResNet has no submodule 'stage3'; did you mean 'stage2' or 'stage1'.*its submodules: stem, "),
    ("stem,stage1.conv", "no submodule 'stage1.conv'; did you mean 'stage1.conv2' or 'stage1.conv1'"),
    ([], "needs deliver_at"),
    (["stage1.bn1"], "below delivery point 'stage1.bn1' is also used above it"),
    (["fc"], "depend on no parameter above the last delivery point 'fc'"),
])
def test_bad_delivery_points_are_refused_by_name(deliver_at, message):
    torch.manual_seed(0)
    net = SmallResNet()
    keys = list(net.state_dict())
    with pytest.raises(BiopropError, match=message):
        bioprop.wrap(net, rule="dfa", deliver_at=deliver_at)
    assert "bioprop_rule" not in net.__dict__ and list(net.state_dict()) == keys  # left as it was


def test_generic_module_needs_deliver_at_in_the_trainer_path():
    with pytest.raises(BiopropError, match="its submodules: stem, stem.0"):
        create_rule("dfa", SmallResNet())


def test_state_dict_round_trip_and_same_seed_same_gradients():
    x, y = data()
    results = []
    for seed in (4, 4, 5):
        rule, _ = wrapped(seed=seed)
        task_loss(rule(x), y).backward()
        results.append(grads(rule.model))
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])
    assert not torch.equal(results[0]["stem.0.weight"], results[2]["stem.0.weight"])
    source, _ = wrapped(seed=4)
    assert "feedback_matrix" in source.model.state_dict()  # M is the model's buffer
    target, _ = wrapped(seed=5)
    target.load_state_dict(source.state_dict())
    task_loss(target(x), y).backward()
    assert all(torch.equal(results[0][n], g) for n, g in grads(target.model).items())
    assert target.to(torch.float64).feedback_matrix.dtype == torch.float64


def test_lazily_drawn_matrix_loads_before_the_first_forward_and_deepcopies():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    target = copy.deepcopy(source)
    bioprop.wrap(source, rule="dfa", deliver_at=["1"])
    source(torch.randn(2, 4))
    bioprop.wrap(target, rule="dfa", deliver_at=["1"], seed=9)
    assert target.feedback_matrix is None  # not drawn yet
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.feedback_matrix, source.feedback_matrix)
    twin = copy.deepcopy(source)
    assert bioprop.rule_of(twin).model is twin  # the copy carries its own rule, wired to it
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for net in (source, twin):
        task_loss(net(x), y).backward()
    assert torch.equal(twin[0].weight.grad, source[0].weight.grad)
    assert source[0].weight.grad.abs().sum() > 0


def test_network_delivered_at_every_hidden_block_matches_the_default_rule():
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    x, y = torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,))
    twin = copy.deepcopy(model)
    default = create_rule("dfa", model, seed=2)
    default.compute_gradients(x, y, ("forward",))
    expected = grads(model)
    named = create_rule("dfa", twin, seed=2, deliver_at=",".join(f"blocks.{i}" for i in range(5)))
    named.compute_gradients(x, y, ("forward",))
    assert torch.equal(named.feedback_matrix, default.feedback_matrix)
    for n, g in grads(twin).items():
        torch.testing.assert_close(g, expected[n], rtol=1e-5, atol=1e-7)
    assert list(default.layer_weights()) == [f"layer{i}" for i in range(1, 7)]
