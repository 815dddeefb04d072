"""DRTP (rules/forward_only/drtp.py): exactly DFA with the one-hot target in place of the error (the
same feedback matrix, a loss whose output error is y*), its output layer backprop's, and its hidden
updates independent of the output."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import create_rule
from bioprop.tasks import LossTask


def _target_as_error(output, labels):
    """A loss whose output error dL/do is y*/N: DFA then delivers B_l y*/N, DRTP's signal."""
    return (output * F.one_hot(labels, output.shape[1]).to(output.dtype)).sum(1).mean()


@pytest.mark.parametrize("model", ["mnist-fc", "mnist-lc", "mnist-conv"])
def test_hidden_updates_are_dfas_with_the_target_as_error_and_the_output_layer_is_backprops(model):
    torch.manual_seed(0)
    network = create_model(model)
    x, y = torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,))
    drtp = create_rule("drtp", copy.deepcopy(network), seed=0)
    dfa = create_rule("dfa", copy.deepcopy(network), seed=0, task=LossTask(_target_as_error, name="target"))
    with torch.no_grad():
        drtp.feedback_matrix.copy_(dfa.feedback_matrix)  # DFA's matrix, windowed and scaled the same way
    drtp.compute_gradients(x, y, ("forward",))
    dfa.compute_gradients(x, y, ("forward",))
    layers = len(network.layers)
    for index in range(layers - 1):
        for kind in ("weight", "bias"):
            got = getattr(drtp.model.layers[index], kind).grad
            want = getattr(dfa.model.layers[index], kind).grad
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"layer {index + 1} {kind}")
    reference = copy.deepcopy(network)  # the output layer: the true gradient of the cross-entropy
    F.cross_entropy(reference(x), y).backward()
    for kind in ("weight", "bias"):
        torch.testing.assert_close(getattr(drtp.model.layers[-1], kind).grad, getattr(reference.layers[-1], kind).grad)


def test_hidden_updates_do_not_depend_on_the_output():
    torch.manual_seed(0)
    network = create_model("mnist-fc")
    x, y = torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,))
    first = create_rule("drtp", copy.deepcopy(network), seed=0)
    second = create_rule("drtp", copy.deepcopy(network), seed=0)
    with torch.no_grad():
        second.model.layers[-1].weight.normal_()  # another output layer: another error, the same targets
    first.compute_gradients(x, y, ("forward",))
    second.compute_gradients(x, y, ("forward",))
    for a, b in zip(first.model.layers[:-1], second.model.layers[:-1]):
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=0, atol=0)
    assert not torch.equal(first.model.layers[-1].weight.grad, second.model.layers[-1].weight.grad)


def test_refuses_other_tasks_and_other_modules_by_name():
    with pytest.raises(BiopropError, match="'drtp' cannot train a reconstruction task"):
        create_rule("drtp", create_model("mnist-autoencoder"))
    with pytest.raises(BiopropError, match="'drtp' needs a bioprop Network"):
        create_rule("drtp", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
    with pytest.raises(BiopropError, match="'drtp' cannot wrap"):
        import bioprop
        bioprop.wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), rule="drtp")
