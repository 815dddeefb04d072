"""Forward gradient (rules/forward_only/forward_gradient.py): known answers. The estimate is unbiased
(its mean over many directions approaches backprop's gradient, in angle and norm), a single weight
perturbation has E‖g‖² = (n + 2)‖∇L‖², the local variant estimates each block's local-loss gradient,
and no backward pass runs at all."""

import math

import pytest
import torch
import torch.nn.functional as F

from bioprop.models import create_model
from bioprop.nn import LocallyConnected2d
from bioprop.rules import create_rule
from bioprop.rules.forward_only.forward_gradient import locally_connected_by_unfold
from small_networks import fc_network


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of jvps on tiny tensors: one thread (several contend for a busy machine's cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(network, n=8, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *network.input_shape, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, network.num_classes, (n,), generator=generator)


def _flat(parameters):
    return torch.cat([p.grad.flatten() for p in parameters])


def _backprop(network, x, y):
    loss = F.cross_entropy(network(x), y)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(network.parameters()))])


def _angle(a, b):
    cosine = F.cosine_similarity(a.flatten(), b.flatten(), dim=0).clamp(-1, 1)
    return math.degrees(math.acos(float(cosine)))


def _estimate(rule, x, y):
    """The rule's gradient of the network's parameters for one call (the mean over its ``directions``)."""
    rule.zero_grad(set_to_none=True)
    rule.compute_gradients(x, y, ("forward",))
    return _flat(rule.model.parameters())


@pytest.mark.parametrize("perturbation", ["weight", "activity"])
def test_mean_over_many_directions_approaches_backprop(perturbation):
    network = fc_network([4, 3], classes=2)  # n = 23 parameters
    x, y = _data(network)
    true = _backprop(network, x, y)
    few = _estimate(create_rule("fg", network, seed=0, perturbation=perturbation, directions=100), x, y)
    many = _estimate(create_rule("fg", network, seed=0, perturbation=perturbation, directions=2000), x, y)
    # the error of a mean of k estimates shrinks as 1/sqrt(k): ~26° -> ~6° for the weight perturbation
    assert _angle(many, true) < 10.0
    assert _angle(many, true) < _angle(few, true)
    assert many.norm() / true.norm() == pytest.approx(1.0, abs=0.08)


def test_a_single_weight_perturbation_has_the_gaussian_variance():
    """E‖(∇L·v) v‖² = (n + 2)‖∇L‖² for v ~ N(0, I_n): the variance grows with the dimension."""
    ratios = {}
    for widths in ([4, 3], [6, 8]):
        network = fc_network(widths, classes=2)
        x, y = _data(network)
        true = _backprop(network, x, y)
        rule = create_rule("fg", network, seed=0, perturbation="weight", directions=1)
        draws = 1000
        total = 0.0
        for _ in range(draws):
            total += float(_estimate(rule, x, y).pow(2).sum())
        n = true.numel()
        ratios[n] = total / draws / float(true.pow(2).sum())
        assert ratios[n] == pytest.approx(n + 2, rel=0.15), (n, ratios[n])  # ~3 standard errors
    small, large = sorted(ratios)
    assert ratios[large] > 2 * ratios[small]  # 23 + 2 against 88 + 2


def test_local_perturbation_estimates_each_blocks_local_loss_gradient():
    """Hidden block l: E[δ_l h_{l-1}ᵀ] = ∂L_l/∂W_l for its head's loss; the output block: ∂L/∂W_L."""
    network = fc_network([4, 3, 3], classes=2)
    x, y = _data(network)
    rule = create_rule("fg", network, seed=0, perturbation="local", directions=2000)
    rule.compute_gradients(x, y, ("forward",))
    blocks, heads = network.blocks, rule.heads
    inputs = [x] + [h.detach() for h in network.hidden_activations(x)[:-1]]  # each block's input, cut
    for index, block in enumerate(blocks):
        out = block(inputs[index])
        loss = F.cross_entropy(heads[index](out) if index < len(heads) else out, y)
        true = torch.cat([g.flatten() for g in torch.autograd.grad(loss, [block.layer.weight, block.layer.bias])])
        estimate = torch.cat([block.layer.weight.grad.flatten(), block.layer.bias.grad.flatten()])
        assert _angle(estimate, true) < 10.0, index
        assert estimate.norm() / true.norm() == pytest.approx(1.0, abs=0.15), index
        if index < len(heads):  # the heads learn from their exact local gradient
            exact = torch.autograd.grad(F.cross_entropy(heads[index](out.detach()), y), list(heads[index].parameters()))
            torch.testing.assert_close(heads[index].weight.grad, exact[0])
            torch.testing.assert_close(heads[index].bias.grad, exact[1])


@pytest.mark.parametrize("model", ["mnist-lc", "mnist-conv"])
@pytest.mark.parametrize("perturbation", ["weight", "activity", "local"])
def test_no_backward_pass_runs(model, perturbation, monkeypatch):
    torch.manual_seed(0)
    rule = create_rule("fg", create_model(model), seed=0, perturbation=perturbation)

    def refuse(*args, **kwargs):
        raise AssertionError("a backward pass ran")

    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    step = rule.compute_gradients(x, y, ("forward",))
    assert torch.isfinite(step.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rule.parameters())


def test_the_unfolded_locally_connected_map_is_the_layers():
    torch.manual_seed(0)
    for layer in [block.layer for block in create_model("mnist-lc").blocks if isinstance(block.layer, LocallyConnected2d)]:
        x = torch.randn(3, layer.in_channels, *layer.in_size)
        torch.testing.assert_close(locally_connected_by_unfold(layer, x, layer.weight, layer.bias), layer(x),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("perturbation", ["activity", "local"])
def test_two_processes_at_half_the_batch_draw_what_one_process_draws(perturbation):
    """Activity noise is drawn per example for the global batch: the mean of the two processes'
    gradients (what the all-reduce gives) equals one process's on the whole batch."""
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    single = create_rule("fg", model, seed=0, perturbation=perturbation)
    single.compute_gradients(x, y, ("forward",))
    expected = [p.grad.clone() for p in single.parameters()]
    total = None
    for rank in range(2):
        rule = create_rule("fg", model, seed=0, perturbation=perturbation)
        rule.load_state_dict(single.state_dict())
        rule.steps = 0
        rule.zero_grad(set_to_none=True)
        rule.set_data_parallel(rank, 2)
        rule.compute_gradients(x[rank::2], y[rank::2], ("forward",))
        grads = [p.grad.clone() for p in rule.parameters()]
        total = grads if total is None else [a + b for a, b in zip(total, grads)]
    for got, want in zip(total, expected):
        torch.testing.assert_close(got / 2, want, rtol=1e-4, atol=1e-5)  # float32 sums in another order
