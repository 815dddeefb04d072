"""Alignment with backprop (bioprop.training.alignment): known answers, and measuring changes nothing."""

import math

import pytest
import torch

from bioprop.models import create_model
from bioprop.rules import create_rule, list_rules
from bioprop.training import alignment


def test_angles_known_answers():
    v = torch.randn(7, 5)
    assert alignment.angle_degrees(v, v) == pytest.approx(0.0, abs=1e-4)  # acos near 1: ~1e-6 degrees of rounding
    assert alignment.angle_degrees(v, -v) == pytest.approx(180.0, abs=1e-4)
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    assert alignment.angle_degrees(a, b) == pytest.approx(90.0)
    assert alignment.angle_degrees(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(45.0)
    assert alignment.angle_degrees(torch.zeros(3), a) == 90.0
    assert alignment.norm_ratio(2 * v, v) == pytest.approx(2.0)
    assert alignment.norm_ratio(torch.zeros(2), torch.zeros(2)) == 1.0
    assert math.isinf(alignment.norm_ratio(torch.ones(2), torch.zeros(2)))


def _measured(rule_name, model="mnist-fc", **options):
    torch.manual_seed(0)
    rule = create_rule(rule_name, create_model(model), seed=0, **options)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    groups = rule.passes()[-1]
    rule.compute_gradients(x, y, groups)
    return rule, alignment.measure(rule, x, y)


@pytest.mark.parametrize("model", ["mnist-fc", "mnist-lc"])
def test_backprop_is_aligned_with_itself(model):
    rule, values = _measured("bp", model)
    layers = list(rule.layer_weights())
    assert [key for key in values if key.startswith("update_angle/")] == [f"update_angle/{n}" for n in layers]
    for name in layers:
        assert values[f"update_angle/{name}"] == pytest.approx(0.0, abs=1e-3)
        assert values[f"update_norm_ratio/{name}"] == pytest.approx(1.0, rel=1e-5)


def test_fa_with_feedback_equal_to_forward_weights_gives_zero_angles():
    torch.manual_seed(0)
    rule = create_rule("fa", create_model("mnist-fc"), seed=0)
    with torch.no_grad():
        for name, (weight, feedback) in rule.feedback_pairs().items():
            feedback.copy_(weight)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    rule.compute_gradients(x, y, ("forward",))
    values = alignment.measure(rule, x, y)
    for name in rule.layer_weights():
        assert values[f"update_angle/{name}"] == pytest.approx(0.0, abs=1e-3)
    assert any(key.startswith("feedback_angle/") for key in values)
    for key in (k for k in values if k.startswith("feedback_angle/")):
        assert values[key] == pytest.approx(0.0, abs=1e-3)


def test_fa_random_feedback_is_far_from_forward_weights():
    _, values = _measured("fa")
    angles = [v for k, v in values.items() if k.startswith("feedback_angle/")]
    assert angles and all(80 < angle < 100 for angle in angles)  # random matrices are near-orthogonal
    # the output layer's update is backprop's (no feedback below the loss)
    assert values["update_angle/layer6"] == pytest.approx(0.0, abs=1e-3)


def test_dfa_output_layer_exact_hidden_layers_not():
    _, values = _measured("dfa")
    assert values["update_angle/layer6"] == pytest.approx(0.0, abs=1e-3)
    assert all(values[f"update_angle/layer{i}"] > 1.0 for i in range(1, 6))


@pytest.mark.parametrize("rule_name", list_rules())
def test_every_rule_reports_an_angle_for_every_trained_layer(rule_name):
    rule, values = _measured(rule_name)
    for name in rule.layer_weights():
        angle = values[f"update_angle/{name}"]
        assert 0.0 <= angle <= 180.0


@pytest.mark.parametrize("rule_name", ["dtp", "fa"])
def test_measuring_leaves_training_unchanged(shared_data, rule_name):
    """A run with alignment every step ends with exactly the parameters of a run without it."""
    from bioprop.data import DataConfig
    from bioprop.training import TrainConfig, train

    finals = []
    for every in (0, 1):
        config = TrainConfig(data=DataConfig("mnist", data_dir=str(shared_data), val_size=1000), model="mnist-fc",
                             rule=rule_name, epochs=1, batch_size=50, limit_batches=4, limit_eval_batches=1,
                             device="cpu", alignment_every=every)
        result = train(config, progress=False, log=lambda *_: None)
        finals.append({k: v.clone() for k, v in result["rule"].state_dict().items() if torch.is_tensor(v)})
        if every:
            diagnostics = result["metrics"][-1]["diagnostics"]
            assert 0 <= diagnostics["update_angle/layer1"] <= 180
            assert diagnostics["update_angle/layer6"] == pytest.approx(0.0, abs=1e-2)
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], rtol=0, atol=0)


def _angles_over_training(shared_data, rule_name, epochs=2, **overrides):
    from bioprop.data import DataConfig
    from bioprop.training import AdamConfig, TrainConfig, train

    if rule_name == "kp":  # the weight decay that completes Kolen-Pollack (Akrout et al. 2019)
        overrides.setdefault("optimizers", {"forward": AdamConfig(weight_decay=5.0)})

    config = TrainConfig(data=DataConfig("mnist", data_dir=str(shared_data), val_size=1000), model="mnist-fc",
                         rule=rule_name, epochs=epochs, batch_size=100, limit_batches=60, limit_eval_batches=1,
                         device="cpu", alignment_every=5, **overrides)
    return [row["diagnostics"] for row in train(config, progress=False, log=lambda *_: None)["metrics"]]


def _mean(row, prefix, layers):
    return sum(row[f"{prefix}/layer{i}"] for i in layers) / len(layers)


def test_kolen_pollack_feedback_aligns_and_fa_feedback_does_not(shared_data):
    """KP's feedback weights receive W's updates, so the angle between B and W falls over training;
    FA's fixed random B stays near-orthogonal to W."""
    kp = _angles_over_training(shared_data, "kp", epochs=3)
    fa = _angles_over_training(shared_data, "fa", epochs=3)
    layers = range(2, 7)  # B of layer 1 carries no error (nothing below it)
    assert _mean(kp[-1], "feedback_angle", layers) < min(_mean(kp[0], "feedback_angle", layers) - 8, 80)
    assert _mean(fa[-1], "feedback_angle", layers) > 80  # W aligns a little with a fixed B: FA's own effect
    # and KP's hidden updates end closer to backprop's than FA's
    assert _mean(kp[-1], "update_angle", range(1, 6)) < _mean(fa[-1], "update_angle", range(1, 6))


def test_dfa_hidden_updates_align_below_90_degrees(shared_data):
    dfa = _angles_over_training(shared_data, "dfa", epochs=1)
    assert all(dfa[-1][f"update_angle/layer{i}"] < 90 for i in range(1, 6))
    assert dfa[-1]["update_angle/layer6"] == pytest.approx(0.0, abs=1e-2)
