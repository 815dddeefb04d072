"""The conventions the papers leave open, as options: the reduction of the target-propagation
losses (``forward_reduction``, ``inverse_reduction``) and the draw of FA's feedback weights
(``feedback_init``, ``feedback_scale``). Known answers: each option rescales exactly the gradients it
should, by exactly the factor it should, and nothing else."""

import math

import pytest
import torch

import bioprop

from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import RULES, create_rule
from bioprop.rules.target_prop.base import REDUCTIONS, squared_error
from small_networks import batch

REDUCING_RULES = [name for name in RULES.names() if "forward_reduction" in RULES.get(name).Options.__dataclass_fields__]


def test_squared_error_reductions_known_answer():
    output = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert squared_error(output, target, "unit-sum").item() == pytest.approx(0.5 * (1 + 4 + 9) / 2)
    assert squared_error(output, target, "element-mean").item() == pytest.approx(0.5 * (1 + 4 + 9) / 6)
    assert REDUCTIONS == ("unit-sum", "element-mean")


def test_every_target_propagation_rule_has_the_reduction_options():
    assert {"tp", "dtp", "sdtp", "ao-sdtp", "drl", "l-drl", "hybrid"} <= set(REDUCING_RULES)


def _gradients(rule_name, model_name, **options):
    torch.manual_seed(0)
    model = create_model(model_name)
    if rule_name == "ao-sdtp":
        options.setdefault("aux_units", 16)
    rule = create_rule(rule_name, model, seed=1, **options)
    x, y = batch(model, size=6, seed=2)
    torch.manual_seed(5)  # the inverse losses' noise
    rule.compute_gradients(x, y, rule.groups)
    return rule, {name: p.grad.clone() for name, p in rule.named_parameters() if p.grad is not None}


def _units(shape) -> int:
    return math.prod(shape)


@pytest.mark.parametrize("rule_name", REDUCING_RULES)
@pytest.mark.parametrize("model_name", ["mnist-fc", "mnist-lc"])
def test_element_mean_divides_each_local_gradient_by_its_layer_units(rule_name, model_name):
    """forward_reduction=element-mean: block l's gradient / units(h_l) (the output block keeps its
    cross-entropy; DRL-style rules' squared error on the logits / classes); inverse_reduction=
    element-mean: inverse l's gradient / units(h_{l-1}), the space it reconstructs."""
    rule, plain = _gradients(rule_name, model_name)
    _, reduced = _gradients(rule_name, model_name, forward_reduction="element-mean", inverse_reduction="element-mean")
    assert plain.keys() == reduced.keys()
    last = len(rule.model.blocks) - 1
    output_is_squared_error = rule_name in ("drl", "l-drl")
    checked = 0
    for name, gradient in plain.items():
        parts = name.split(".")
        if parts[0] == "model":  # model.blocks.<i>.layer.<weight|bias>
            index = int(parts[2])
            if index == last:
                factor = rule.model.num_classes if output_is_squared_error else 1
            else:
                factor = _units(rule.shapes[index])
        else:  # inverses.layer<l>.<...>: reconstructs h_{l-1}, 0-based block index l-1 -> shapes[l-2]
            layer = int(parts[1][len("layer"):])
            factor = _units(rule.shapes[layer - 2])
        torch.testing.assert_close(reduced[name] * factor, gradient, rtol=1e-4, atol=1e-7, msg=name)
        checked += 1
    assert checked == len(plain) > 0


def test_reduction_options_are_checked_by_name():
    model = create_model("mnist-fc")
    with pytest.raises(BiopropError, match="forward_reduction"):
        create_rule("sdtp", model, forward_reduction="mean")
    with pytest.raises(BiopropError, match="inverse_reduction"):
        create_rule("dtp", model, inverse_reduction="sum")


# -- FA's feedback weights ---------------------------------------------------------------------


def _feedback(rule):
    return [site.stored.clone() for site in rule.sites]


@pytest.mark.parametrize("rule_name", ["fa", "kp", "wm", "frsf"])
def test_feedback_scale_multiplies_the_same_draw(rule_name):
    plain = _feedback(create_rule(rule_name, create_model("mnist-fc"), seed=4))  # a model wraps one rule
    scaled = _feedback(create_rule(rule_name, create_model("mnist-fc"), seed=4, feedback_scale=2.5))
    for b, b_scaled in zip(plain, scaled):
        torch.testing.assert_close(b_scaled, 2.5 * b)


def test_glorot_normal_feedback_has_glorot_variance():
    rule = create_rule("fa", create_model("mnist-fc"), seed=0, feedback_init="glorot-normal")
    uniform = create_rule("fa", create_model("mnist-fc"), seed=0)
    for site, other in zip(rule.sites, uniform.sites):
        fan_in, fan_out = site.ops.fans()
        expected = math.sqrt(2.0 / (fan_in + fan_out))
        assert site.stored.std().item() == pytest.approx(expected, rel=0.05)
        assert other.stored.std().item() == pytest.approx(expected, rel=0.05)  # same variance
        assert site.stored.abs().max() > math.sqrt(3) * expected  # not bounded like the uniform draw


def test_feedback_scale_under_fa_scales_each_layers_update_by_its_power():
    """With B scaled by c, layer l's FA update is c^(L-l) times the unscaled one (exactly)."""
    model = create_model("mnist-fc")
    x, y = batch(model, size=5, seed=1)
    gradients = []
    for scale in (1.0, 2.0):
        model.zero_grad()
        rule = create_rule("fa", model, seed=7, feedback_scale=scale)
        rule.compute_gradients(x, y, rule.groups)
        gradients.append([layer.weight.grad.clone() for layer in model.layers])
        bioprop.unwrap(model)  # a model wraps one rule at a time
    layers = len(model.layers)
    for index, (plain, scaled) in enumerate(zip(*gradients)):
        torch.testing.assert_close(scaled, plain * 2.0 ** (layers - 1 - index), rtol=1e-5, atol=1e-9)


def test_feedback_options_only_where_a_random_feedback_weight_is_drawn():
    for name in ("usf", "brsf"):  # nothing is drawn once (usf) or drawn per batch (brsf)
        assert "feedback_scale" not in RULES.get(name).Options.__dataclass_fields__
    with pytest.raises(BiopropError, match="feedback_scale"):
        create_rule("fa", create_model("mnist-fc"), feedback_scale=0.0)
    with pytest.raises(BiopropError, match="feedback_init"):
        create_rule("fa", create_model("mnist-fc"), feedback_init="orthogonal")
