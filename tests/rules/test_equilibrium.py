"""Equilibrium propagation (``ep``): known answers.

The reference is the gradient of the loss at the free fixed point, dL(o(s*(theta)), y)/dtheta,
computed here independently of the rule: every layer is turned into its dense matrix by running
the layer's own forward on a basis of inputs (so no transposed map of the rule is used), the
fixed-point equations s = tanh(A s + c) of that dense system are differentiated implicitly, and the
linear system (I - D A)^T lambda = dL/ds is solved with torch.linalg.solve; torch.autograd carries
lambda back to the parameters through the dense matrices.
"""

from __future__ import annotations

import math

import pytest
import torch

from bioprop.errors import BiopropError
from bioprop.models.zoo import LayerSpec, build_network
from bioprop.rules import create_rule

TINY = {
    "fc": [LayerSpec("fc", 8), LayerSpec("fc", 8), LayerSpec("fc", 8)],
    "lc": [LayerSpec("lc", 3, 3, 2), LayerSpec("fc", 8)],
    "conv": [LayerSpec("conv", 3, 3, 2), LayerSpec("conv", 4, 3, 1), LayerSpec("fc", 8)],
}
# phases converged to float64 rounding on the tiny networks (eps = 1 converges fastest; every eps has the same fixed points)
LONG = {"free_steps": 150, "nudged_steps": 150, "relaxation_step": 1.0}


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_network(f"tiny-{kind}", (1, 6, 6), TINY[kind], 4).double()
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, 1, 6, 6, generator=generator, dtype=torch.float64)
    return model, x, torch.randint(0, 4, (3,), generator=generator)


def dense(block, in_shape):
    """``(M, c)`` with ``layer(prepare(z)) = M z + c`` for z flattened, from the layer's own forward (differentiable
    in the layer's parameters)."""
    size = math.prod(in_shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *in_shape)
    offset = block.layer(block.layer_input(torch.zeros(1, *in_shape, dtype=torch.float64))).flatten(1)
    columns = block.layer(block.layer_input(basis)).flatten(1) - offset
    return columns.t(), offset[0]


def implicit_gradient(model, x, y, states):
    """The gradient of the batch-mean cross-entropy at the free fixed point ``states`` (s_1 .. s_{L-1}),
    by implicit differentiation; also returns the fixed point's residual max|s - tanh(A s + c)|."""
    blocks = list(model.blocks)
    shapes = [x.shape[1:]] + [s.shape[1:] for s in states]
    sizes = [math.prod(shape) for shape in shapes[1:]]
    maps = [dense(block, shape) for block, shape in zip(blocks, shapes)]  # block k: M_k, c_k
    hidden = len(states)
    offsets = [0] + list(torch.tensor(sizes).cumsum(0).tolist())

    def couplings():
        """A (the symmetric couplings between hidden layers) and c (input drive and biases), per example."""
        A = torch.zeros(offsets[-1], offsets[-1], dtype=torch.float64)
        for k in range(1, hidden):
            M = maps[k][0]
            A[offsets[k]:offsets[k + 1], offsets[k - 1]:offsets[k]] = M
            A[offsets[k - 1]:offsets[k], offsets[k]:offsets[k + 1]] = M.t()
        drive = torch.zeros(len(x), offsets[-1], dtype=torch.float64)
        drive[:, :offsets[1]] = x.flatten(1) @ maps[0][0].t()
        c = torch.cat([maps[k][1] for k in range(hidden)])
        return A, drive + c

    s = torch.cat([state.flatten(1) for state in states], 1).detach()
    A, c = couplings()
    residual = float((s - torch.tanh(s @ A.t() + c)).abs().max().detach())
    top = s[:, offsets[-2]:].clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(top @ maps[-1][0].t() + maps[-1][1], y)
    (loss_top,) = torch.autograd.grad(loss, top, retain_graph=True)
    loss_s = torch.zeros_like(s)
    loss_s[:, offsets[-2]:] = loss_top
    slope = 1 - s.pow(2)  # D = diag(tanh'), per example
    identity = torch.eye(s.shape[1], dtype=torch.float64)
    lam = torch.linalg.solve(identity - A.t().detach() * slope[:, None, :], loss_s)  # (I - D A)^T lambda = dL/ds
    # dL/dtheta = dL/dtheta|direct + lambda^T dG/dtheta, G(s, theta) = tanh(A(theta) s + c(theta))
    objective = (lam.detach() * torch.tanh(s @ A.t() + c)).sum() + loss
    params = list(model.parameters())
    return residual, torch.autograd.grad(objective, params, allow_unused=True)


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def angle(a, b):
    cosine = float(a @ b / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def ep_gradient(model, x, y, **options):
    rule = create_rule("ep", model, **{**LONG, **options})
    model.zero_grad(set_to_none=True)
    rule.compute_gradients(x, y, ("forward",))
    return flat(p.grad for p in model.parameters())


def free_states(rule, x):
    with torch.no_grad():
        return [torch.tanh(u) for u in rule.free_phase(x)]


@pytest.mark.parametrize("kind", list(TINY))
def test_the_update_tends_to_the_implicit_gradient_and_centred_beats_one_sided(kind):
    model, x, y = tiny(kind)
    residual, reference = implicit_gradient(model, x, y, free_states(create_rule("ep", model, **LONG), x))
    assert residual < 1e-12  # the premise: the free phase is at its fixed point
    reference = flat(reference)
    betas = (0.3, 0.1, 0.03, 0.01)
    centred = [angle(ep_gradient(model, x, y, nudge_strength=b), reference) for b in betas]
    one_sided = [angle(ep_gradient(model, x, y, nudge_strength=b, nudging="one-sided"), reference) for b in betas]
    assert all(a > b for a, b in zip(centred, centred[1:])), centred
    assert all(a > b for a, b in zip(one_sided, one_sided[1:])), one_sided
    assert all(c < o for c, o in zip(centred, one_sided)), (centred, one_sided)
    assert centred[-1] < 0.05 and one_sided[-1] < 2.0
    # the orders of the errors: O(beta) one-sided, O(beta²) centred (beta 0.1 -> 0.01: x10 and x100)
    assert 5 < one_sided[1] / one_sided[3] < 20 and centred[1] / centred[3] > 40, (centred, one_sided)


def test_the_readout_learns_from_its_true_gradient_at_the_free_phase():
    model, x, y = tiny("fc")
    rule = create_rule("ep", model, **LONG)
    states = free_states(rule, x)
    readout = model.blocks[-1].layer
    rule.compute_gradients(x, y, ("forward",))
    got = readout.weight.grad.clone()
    readout.weight.grad = None
    torch.nn.functional.cross_entropy(readout(states[-1]), y).backward()
    torch.testing.assert_close(got, readout.weight.grad, rtol=1e-12, atol=1e-14)


def test_the_step_reports_the_free_phase_which_is_what_evaluation_scores():
    """The running train error must score the rule's prediction (the free phase), not the network's
    forward pass, which on a trained EP network differs from it."""
    model, x, y = tiny("fc")
    rule = create_rule("ep", model, **LONG)
    step = rule.compute_gradients(x, y, ("forward",))
    with torch.no_grad():
        prediction = rule.predict(x)
        forward = model(x)
    torch.testing.assert_close(step.logits, prediction, rtol=0, atol=0)
    torch.testing.assert_close(step.loss, torch.nn.functional.cross_entropy(prediction, y), rtol=0, atol=0)
    assert (forward - prediction).abs().max() > 1e-6  # the two differ: the test tells them apart


@pytest.mark.parametrize("kind", list(TINY))
def test_gradients_through_the_prediction_are_the_implicit_gradient(kind):
    """``predict`` is the free phase's readout, and autograd runs through the relaxation: at a converged free
    phase its gradient is the implicit one (what alignment measures the rule against)."""
    model, x, y = tiny(kind)
    rule = create_rule("ep", model, **LONG)
    _, reference = implicit_gradient(model, x, y, free_states(rule, x))
    model.zero_grad(set_to_none=True)
    output = rule.predict(x)
    assert not torch.allclose(output, model(x))  # the free phase is not the forward pass
    torch.nn.functional.cross_entropy(output, y).backward()
    torch.testing.assert_close(flat(p.grad for p in model.parameters()), flat(reference), rtol=1e-6, atol=1e-9)


def energy(rule, x, u):
    """E(s) = sum G(s) - Phi(s) per example, with s = tanh(u), G(s) = s atanh(s) + ½ log(1 - s²) = s u - log cosh u."""
    s = [torch.tanh(value) for value in u]
    log_cosh = [value.abs() + torch.log1p(torch.exp(-2 * value.abs())) - math.log(2) for value in u]
    total = sum((si * ui - lc).flatten(1).sum(1) for si, ui, lc in zip(s, u, log_cosh))
    for k, block in enumerate(rule.model.blocks[:-1]):
        total = total - (s[k] * block.layer(block.layer_input(x if k == 0 else s[k - 1]))).flatten(1).sum(1)
    return total


@pytest.mark.parametrize("model_name", ["mnist-fc", "mnist-lc", "mnist-conv"])
@pytest.mark.parametrize("step", [1.0, 0.5])
def test_the_free_phase_descends_the_energy_step_by_step(model_name, step):
    from bioprop.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name).double()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rule = create_rule("ep", model, relaxation_step=step)
    with torch.no_grad():
        u = rule.forward_pass(x)
        energies = [energy(rule, x, u)]
        for _ in range(15):
            u = [a + d for a, d in zip(u, rule.relax(x, u, 1))]
            energies.append(energy(rule, x, u))
    for before, after in zip(energies, energies[1:]):
        assert (after <= before + 1e-9 * before.abs()).all(), (before, after)
    assert (energies[-1] < energies[0]).all()


def test_zero_nudging_strength_cannot_be_set_and_tiny_strength_stays_finite():
    model, x, y = tiny("fc")
    with pytest.raises(BiopropError, match="nudge_strength"):
        create_rule("ep", model, nudge_strength=0.0)
    with pytest.raises(BiopropError, match="relaxation_step"):
        create_rule("ep", model, relaxation_step=1.5)
    with pytest.raises(BiopropError, match="nudging"):
        create_rule("ep", model, nudging="symmetric")
    assert torch.isfinite(ep_gradient(model, x, y, nudge_strength=1e-6)).all()


def test_ep_refuses_a_module_that_is_not_a_network():
    with pytest.raises(BiopropError, match="'ep'.*bioprop Network"):
        create_rule("ep", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
