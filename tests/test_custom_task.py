"""Your own loss for any rule (bioprop.tasks.LossTask, create_rule(task=...), rule.task = ...):
known answers (a loss twice the cross-entropy gives exactly twice the gradients; DFA delivers the
custom loss's gradient), a regression problem trained by DTP and FA through compute_gradients, and
every registered rule training on the custom loss."""

import functools

import pytest
import torch
import torch.nn.functional as F

import bioprop
from bioprop.errors import BiopropError
from bioprop.models import LayerSpec, build_network
from bioprop.rules import RULES
from bioprop.rules.bp import Backprop
from bioprop.tasks import TASKS, LossTask, Task, as_task, loss_gradient, task_of, task_of_row

CLASSIFICATION, RECONSTRUCTION = TASKS.get("classification"), TASKS.get("reconstruction")


def twice_cross_entropy(output, target):
    return 2 * F.cross_entropy(output, target)


def classifier(seed=0, classes=4):
    torch.manual_seed(seed)
    return build_network("tiny", (1, 1, 6), [LayerSpec("fc", 8), LayerSpec("fc", 8)], num_classes=classes)


def regression_network(seed=0):
    torch.manual_seed(seed)
    return build_network("regression", (1, 1, 4), [LayerSpec("fc", 16), LayerSpec("fc", 16)], num_classes=1)


def regression_data(n=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, 4, generator=generator)
    y = torch.sin(x.flatten(1)).sum(1, keepdim=True) / 2  # (n, 1) targets, the output's shape
    return x, y


def batch(seed=0, n=5, classes=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 1, 6, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def gradients(rule, x, y):
    for parameter in rule.parameters():
        parameter.grad = None
    step = rule.compute_gradients(x, y, rule.passes()[0])
    return step, [p.grad.clone() for p in rule.parameter_groups()["forward"]]


# -- known answers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bp", "fa", "dfa"])
def test_twice_the_cross_entropy_gives_exactly_twice_the_gradients(name):
    x, y = batch()
    default_step, default = gradients(bioprop.create_rule(name, classifier(), seed=0), x, y)
    for task in (LossTask(twice_cross_entropy, like="classification"), twice_cross_entropy):  # a Task or a bare loss
        step, doubled = gradients(bioprop.create_rule(name, classifier(), seed=0, task=task), x, y)
        assert all(torch.equal(d, 2 * g) for d, g in zip(doubled, default))
        assert torch.equal(step.loss, 2 * default_step.loss)


def test_wrapped_feedback_module_trains_on_its_rules_task():
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    wrapped = bioprop.wrap(module, rule="fa", seed=0)
    x, y = batch()
    _, default = gradients(wrapped.bioprop_rule, x, y)
    wrapped.bioprop_rule.task = twice_cross_entropy
    _, doubled = gradients(wrapped.bioprop_rule, x, y)
    assert all(torch.equal(d, 2 * g) for d, g in zip(doubled, default))


def hinge(output, target):
    """A custom loss whose gradient is nothing like softmax - one-hot."""
    return F.multi_margin_loss(output, target) + 0.1 * output.pow(2).sum(1).mean()


def test_dfa_delivers_the_custom_losss_output_gradient():
    network = classifier()
    rule = bioprop.create_rule("dfa", network, seed=0, task=hinge)
    x, y = batch()
    delivered = []
    project = rule.project_error
    rule.project_error = lambda error, index: delivered.append(error.clone()) or project(error, index)
    rule.compute_gradients(x, y, ("forward",))
    logits = network(x).detach().requires_grad_()
    (expected,) = torch.autograd.grad(hinge(logits, y), logits)
    assert len(delivered) == 2 and all(torch.equal(error, expected) for error in delivered)
    # and the first layer's update is (B_1 e) * tanh'(a_1), times its input: the textbook DFA update
    with torch.no_grad():
        h1 = network.blocks[0](x)
        delta = (expected @ (rule.feedback_weight(0))) * (1 - h1.pow(2))
    torch.testing.assert_close(network.layers[0].weight.grad, delta.t() @ x.flatten(1))
    torch.testing.assert_close(network.layers[0].bias.grad, delta.sum(0))


def test_wrapped_dfa_task_and_a_custom_loss_through_backward_agree():
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    rule = bioprop.rule_of(bioprop.wrap(module, rule="dfa", deliver_at=["2"], seed=0))
    rule.task = hinge
    x, y = batch()
    _, through_rule = gradients(rule, x, y)
    for parameter in module.parameters():
        parameter.grad = None
    hinge(module(x), y).backward()  # the user's own loss, back-propagated: DFA's error is its gradient
    assert all(torch.equal(p.grad, g) for p, g in zip(module.parameters(), through_rule))


def test_output_error_is_the_gradient_of_the_summed_loss_also_without_grad():
    output, labels, target = torch.randn(5, 4), torch.randint(0, 4, (5,)), torch.randn(5, 4)
    with torch.no_grad():  # target propagation computes its targets here
        ce = LossTask(F.cross_entropy, like="classification").output_error(output, labels)
        half_squared = LossTask(RECONSTRUCTION.loss).output_error(output, target)
        mse = LossTask(F.mse_loss).output_error(output, target)
    torch.testing.assert_close(ce, CLASSIFICATION.output_error(output, labels))
    torch.testing.assert_close(half_squared, RECONSTRUCTION.output_error(output, target))
    torch.testing.assert_close(mse, 2 * (output - target) / 4)  # mean over 5 x 4 elements, times 5
    torch.testing.assert_close(loss_gradient(F.mse_loss, output, target), mse)


# -- training on your own loss -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", [("dtp", {"alpha": 0.2, "noise": 0.1, "diagnostics_every": 0}), ("fa", {})])
def test_regression_trains_through_compute_gradients(name, options):
    x, y = regression_data()
    rule = bioprop.create_rule(name, regression_network(), seed=0, task=LossTask(F.mse_loss), **options)
    optimizers = {group: torch.optim.Adam(params, lr=1e-2) for group, params in rule.parameter_groups().items()}
    with torch.no_grad():
        before = F.mse_loss(rule(x), y).item()
    for epoch in range(12):  # 96 steps: the loss falls to 5 % (dtp), 9 % (fa) of its start
        for groups in rule.passes():
            for rows in torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).split(32):
                for group in groups:
                    optimizers[group].zero_grad()
                step = rule.compute_gradients(x[rows], y[rows], groups)
                for group in groups:
                    optimizers[group].step()
    with torch.no_grad():
        after = F.mse_loss(rule(x), y).item()
    assert step.logits.shape == (32, 1) and torch.isfinite(step.loss)
    assert after < 0.3 * before, (before, after)


@pytest.mark.parametrize("name", RULES.names())
def test_every_rule_trains_on_the_custom_loss(name):
    """StepResult.loss is the custom loss of the rule's prediction (the network's output unless the rule
    infers otherwise, as equilibrium propagation's free phase), and the forward group learns from it."""
    if RULES.get(name).tasks is not None:  # e.g. Forward-Forward, DRTP: classification only, refused by name
        pytest.skip(f"{name} serves only {', '.join(RULES.get(name).tasks)}")
    x, y = regression_data(n=8)
    network = regression_network()
    rule = bioprop.create_rule(name, network, seed=0, task=LossTask(F.l1_loss, name="l1"))
    assert rule.task.name == "l1" and task_of(rule) is rule.task and task_of(network) is CLASSIFICATION
    with torch.no_grad():
        expected = F.l1_loss(rule.predict(x), y)
    step = rule.compute_gradients(x, y, rule.passes()[-1])
    torch.testing.assert_close(step.loss, expected)
    assert all(torch.isfinite(loss) for loss in step.local_losses.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rule.parameter_groups()["forward"])


def test_label_smoothing_keeps_the_classification_metrics():
    smoothing = functools.partial(F.cross_entropy, label_smoothing=0.1)
    task = LossTask(smoothing, like="classification", name="smoothed")
    output, labels = torch.randn(6, 12), torch.randint(0, 12, (6,))
    assert task.metric == "error" and task.sums == CLASSIFICATION.sums
    assert task.output_units((1, 28, 28), 12) == 12 and task.target(None, labels) is labels
    sums = task.batch_sums(output, labels)
    assert torch.equal(sums["error"], CLASSIFICATION.batch_sums(output, labels)["error"]) and "top5_error" in sums
    torch.testing.assert_close(sums["loss"], smoothing(output, labels) * 6)  # the metrics' loss is yours
    assert torch.equal(task.best_prediction(labels, 12, torch.float32), F.one_hot(labels, 12).float())


def test_regression_task_metrics_target_and_predictions():
    task = LossTask(F.mse_loss)
    output, target = torch.randn(4, 3), torch.randn(4, 3)
    assert (task.name, task.metric, task.sums) == ("custom", "loss", ("loss",))
    sums = task.batch_sums(output, target)
    torch.testing.assert_close(sums["loss"], F.mse_loss(output, target) * 4)
    assert task.metrics({"loss": 8.0}, 4.0, 3) == {"loss": 2.0}
    assert task.prediction(output) is output
    assert torch.equal(task.best_prediction(target, 3, torch.float64), target.double())
    assert torch.equal(task.best_prediction(torch.tensor([2, 0]), 3, torch.float32), torch.eye(3)[[2, 0]])
    denoise = LossTask(F.mse_loss, target=lambda x, y: x.flatten(1))
    x = torch.randn(2, 1, 2, 2)
    assert torch.equal(denoise.target(x, None), x.flatten(1))
    with pytest.raises(BiopropError, match="does not know how many outputs"):
        task.output_units((1, 28, 28), 10)


def test_setting_and_refusing_tasks():
    network = classifier()
    rule = bioprop.create_rule("bp", network, task="reconstruction")
    assert rule.task is RECONSTRUCTION
    rule.task = None  # back to the model's
    assert rule.task is CLASSIFICATION
    assert as_task(F.mse_loss).loss_function is F.mse_loss and isinstance(as_task(F.mse_loss), Task)
    for bad in (3, LossTask, None):
        with pytest.raises(BiopropError, match="a task is a name"):
            as_task(bad)
    with pytest.raises(BiopropError, match="unknown task 'regression'"):
        bioprop.create_rule("bp", network, task="regression")
    with pytest.raises(BiopropError, match="needs a loss function"):
        LossTask("mse")
    with pytest.raises(BiopropError, match="like= names a task"):
        LossTask(F.mse_loss, like=F.mse_loss)

    class ClassifiesOnly(Backprop):
        tasks = ("classification",)

    only = ClassifiesOnly(network)
    with pytest.raises(BiopropError, match="cannot train a custom task"):
        only.task = LossTask(F.mse_loss)
    assert only.task is CLASSIFICATION


def test_a_registered_loss_task_does_not_claim_rows_with_a_loss():
    TASKS.register("aaa-regression")(LossTask(F.mse_loss, name="aaa-regression"))
    try:
        assert task_of_row({"test_error": 1.0, "test_loss": 0.1}) is CLASSIFICATION
        assert task_of_row({"test_reconstruction_error": 0.01, "test_loss": 0.1}) is RECONSTRUCTION
        assert task_of_row({"test_loss": 0.1}).name == "aaa-regression"
    finally:
        del TASKS._entries["aaa-regression"]
