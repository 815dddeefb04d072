"""Sign symmetry (usf, brsf, frsf), Kolen-Pollack and weight mirrors on bioprop's Networks: updates reach
every parameter, fixed feedback stays fixed, seeds reproduce, B = W gives backprop, KP's B - W decays
by (1 - lr * wd) per step, weight mirrors align B with W, state round-trips, ranks agree."""

import copy
import math

import pytest
import torch

from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import RULES, create_rule, rule_options
from bioprop.rules.base import LearningRule
from bioprop.training.config import AdamConfig
from bioprop.training.trainer import make_optimizer
from small_networks import batch

NEW_RULES = ["usf", "brsf", "frsf", "kp", "wm"]
LEARNED = {"kp", "wm"}
MODELS = ["mnist-fc", "mnist-lc", "mnist-conv"]


def all_groups(rule):
    return tuple(rule.parameter_groups())


def gradients(rule, x, y):
    rule.zero_grad(set_to_none=True)
    rule.compute_gradients(x, y, all_groups(rule))
    return {name: p.grad.clone() for name, p in rule.named_parameters() if p.grad is not None}


def set_feedback_to_forward(rule):
    with torch.no_grad():
        for site in rule.sites:
            site.stored.copy_(site.weight)


def angle(a, b):
    a, b = a.detach(), b.detach()
    return math.degrees(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).clamp(-1, 1).acos())


@pytest.mark.parametrize("rule_name", NEW_RULES)
@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_is_updated_and_only_learned_feedback_changes(rule_name, name):
    torch.manual_seed(0)
    model = create_model(name)
    rule = create_rule(rule_name, model, seed=1)
    before = copy.deepcopy(rule.state_dict())
    groups = rule.parameter_groups()
    assert set(groups) == set(RULES.get(rule_name).groups)
    optimizers = [torch.optim.Adam(params, lr=1e-3) for params in groups.values()]
    rule.compute_gradients(*batch(model, size=3), all_groups(rule))
    for optimizer in optimizers:
        optimizer.step()
    for key, parameter in rule.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key
        assert not torch.equal(parameter.detach(), before[key]), key
    for key, buffer in rule.named_buffers():
        assert torch.equal(buffer, before[key]), f"fixed feedback {key} changed"
    learned = [key for key in before if key.endswith(".feedback_weight")]  # stored on each layer
    assert len(learned) == (len(model.layers) if rule_name in LEARNED | {"frsf"} else 0)
    if learned:
        assert all(key in dict(rule.named_parameters()) for key in learned) == (rule_name in LEARNED)
    assert list(rule.feedback_pairs()) == [f"layer{i + 1}" for i in range(len(model.layers))]
    assert list(rule.layer_weights()) == list(rule.feedback_pairs())


@pytest.mark.parametrize("rule_name", NEW_RULES)
def test_same_seed_same_gradients_other_seed_other_feedback(rule_name):
    results = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        model = create_model("mnist-conv")
        results.append(gradients(create_rule(rule_name, model, seed=seed), *batch(model)))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    first = "model.blocks.0.layer.weight"
    assert (rule_name == "usf") == torch.equal(results[0][first], results[2][first])  # usf has no randomness


@pytest.mark.parametrize("rule_name", ["usf", "brsf", "frsf"])
@pytest.mark.parametrize("name", MODELS)
def test_sign_rules_feedback_has_the_signs_of_the_forward_weights(rule_name, name):
    torch.manual_seed(0)
    rule = create_rule(rule_name, create_model(name), seed=2)
    for layer, (weight, feedback) in rule.feedback_pairs().items():
        assert torch.equal(torch.sign(feedback), torch.sign(weight)), layer
        if rule_name == "usf":
            torch.testing.assert_close(feedback.abs(), weight.abs().mean().expand_as(weight))
            assert math.isclose(feedback.abs().sum().item(), weight.abs().sum().item(), rel_tol=1e-4)


def test_brsf_redraws_magnitudes_every_batch_and_ranks_agree():
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    other_rank = create_rule("brsf", copy.deepcopy(model), seed=3)
    rule = create_rule("brsf", model, seed=3)
    other_rank.set_data_parallel(1, 2)
    first = rule.feedback_weight(0).clone()
    assert torch.equal(first, other_rank.feedback_weight(0))
    rule.compute_gradients(*batch(model), ("forward",))
    assert not torch.equal(rule.feedback_weight(0), first)
    assert torch.equal(torch.sign(rule.feedback_weight(0)), torch.sign(first))


@pytest.mark.parametrize("rule_name", ["brsf", "wm"])
def test_per_batch_draws_go_through_seeded_draw(rule_name, monkeypatch):
    """The CUDA-against-CPU test replaces ``seeded_draw`` to give both devices the same numbers;
    that only works if every per-batch draw goes through it (zeros here: brsf's feedback vanishes,
    weight mirrors' B moves by the decay alone)."""
    calls = []

    def zeros(kind, shape, seed, device, dtype):
        calls.append(kind)
        return torch.zeros(shape, device=device, dtype=dtype)

    monkeypatch.setattr(LearningRule, "seeded_draw", staticmethod(zeros))
    torch.manual_seed(0)
    rule = create_rule(rule_name, create_model("mnist-fc"), seed=0)
    rule.compute_gradients(*batch(rule.model), all_groups(rule))
    assert calls and set(calls) == {"uniform" if rule_name == "brsf" else "normal"}
    if rule_name == "brsf":
        assert all(torch.count_nonzero(rule.feedback_weight(i)) == 0 for i in range(len(rule.sites)))
    else:
        for site in rule.sites:  # -(0 x^T)/(N P) + lambda B
            torch.testing.assert_close(site.stored.grad, rule.options.mirror_decay * site.stored.detach())


@pytest.mark.parametrize("rule_name", ["kp", "wm"])
@pytest.mark.parametrize("name", MODELS)
def test_learned_feedback_equal_to_forward_weights_is_backprop(rule_name, name):
    torch.manual_seed(0)
    model = create_model(name)
    x, y = batch(model)
    bp = create_rule("bp", model)
    x_bp = x.clone().requires_grad_()
    bp.zero_grad()
    bp.compute_gradients(x_bp, y, ("forward",))
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}
    rule = create_rule(rule_name, model)
    set_feedback_to_forward(rule)
    x_rule = x.clone().requires_grad_()
    rule.zero_grad()
    rule.compute_gradients(x_rule, y, all_groups(rule))
    assert torch.equal(x_rule.grad, x_bp.grad)  # the input gradient: the error sent through every B
    for key in expected:  # the model's own parameters (B, now on the model too, learns W's or the mirror's)
        assert torch.equal(model.get_parameter(key).grad, expected[key]), key


def test_usf_with_weights_of_equal_magnitude_is_backprop():
    """uSF's B is W itself when all |W| of a layer are equal (the sign-symmetry 'sham' control)."""
    torch.manual_seed(0)
    model = create_model("mnist-conv")
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.copy_(torch.sign(layer.weight) * 0.05)
    x, y = batch(model)
    bp_grads = gradients(create_rule("bp", model), x, y)
    usf_grads = gradients(create_rule("usf", model), x, y)
    for key in bp_grads:
        torch.testing.assert_close(usf_grads[key], bp_grads[key], rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("name", ["mnist-fc", "mnist-conv"])
def test_kolen_pollack_difference_shrinks_by_the_decay_factor_every_step(name):
    torch.manual_seed(0)
    model = create_model(name)
    rule = create_rule("kp", model, seed=0)
    adam = AdamConfig(lr=1e-3, weight_decay=50.0)
    groups = rule.parameter_groups()
    optimizers = [make_optimizer(groups["forward"], adam), make_optimizer(groups["feedback"], adam)]
    factor = 1 - adam.lr * adam.weight_decay
    start = [(site.stored - site.weight).detach().clone() for site in rule.sites]
    for step in range(1, 6):
        for optimizer in optimizers:
            optimizer.zero_grad()
        rule.compute_gradients(*batch(model, seed=step), ("forward", "feedback"))
        for site in rule.sites:
            torch.testing.assert_close(site.stored.grad, site.weight.grad, rtol=0, atol=0)
        for optimizer in optimizers:
            optimizer.step()
        for site, difference in zip(rule.sites, start):
            torch.testing.assert_close(site.stored - site.weight, difference * factor ** step, rtol=1e-4, atol=1e-7)
    for site, difference in zip(rule.sites, start):  # B converges to W: 0.95^5 of the start distance
        assert (site.stored - site.weight).norm() < 0.8 * difference.norm()


@pytest.mark.parametrize("name", MODELS)
def test_weight_mirrors_align_feedback_with_forward_weights(name):
    torch.manual_seed(0)
    model = create_model(name)
    rule = create_rule("wm", model, seed=0, mirror_noise=1.0, mirror_decay=1.0)
    optimizer = torch.optim.Adam(rule.parameter_groups()["feedback"], lr=1e-2)
    angles_before = [angle(site.weight, site.stored) for site in rule.sites]
    x, y = batch(model, size=8)
    for _ in range(40):
        optimizer.zero_grad()
        rule.compute_gradients(x, y, ("feedback",))
        optimizer.step()
    angles_after = [angle(site.weight, site.stored) for site in rule.sites]
    for layer, before, after in zip(rule.feedback_pairs(), angles_before, angles_after):
        assert after < before - 15, (layer, before, after)  # from ~90 degrees (random B)


def test_weight_mirror_gradient_is_zero_at_its_fixed_point_on_average():
    """For a linear layer, E[-(W x) x^T / N] = -sigma^2 W, so B = (sigma^2 / lambda) W is the fixed point."""
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    rule = create_rule("wm", model, mirror_noise=0.5, mirror_decay=0.25)
    site = rule.sites[-1]
    with torch.no_grad():
        site.stored.copy_(site.weight * (0.5 ** 2 / 0.25))
    x = torch.zeros(20000, site.weight.shape[1])
    gradient = rule.mirror_gradient(site, x, None)
    assert gradient.norm() < 0.05 * site.stored.norm()


def test_weight_mirror_data_parallel_ranks_average_to_one_process():
    """In float64, so that the only differences left are the order of the sums (float32 rounding of
    these sums alone reaches 1e-6)."""
    torch.manual_seed(0)
    model = create_model("mnist-conv").double()
    x, y = batch(model, size=6, dtype=torch.float64)
    single = create_rule("wm", copy.deepcopy(model), seed=4)
    expected = gradients(single, x, y)
    ranks = []
    for rank in range(2):
        rule = create_rule("wm", copy.deepcopy(model), seed=4)
        rule.set_data_parallel(rank, 2)
        ranks.append(gradients(rule, x[rank::2], y[rank::2]))
    for key in expected:
        torch.testing.assert_close((ranks[0][key] + ranks[1][key]) / 2, expected[key], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rule_name", NEW_RULES)
def test_state_dict_round_trip_resumes_exactly(rule_name):
    torch.manual_seed(0)
    model = create_model("mnist-lc")
    rule = create_rule(rule_name, model, seed=7)
    gradients(rule, *batch(model, seed=1))
    with torch.no_grad():
        for parameter in rule.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    state = copy.deepcopy(rule.state_dict())
    expected = gradients(rule, *batch(model, seed=2))
    torch.manual_seed(1)
    restored = create_rule(rule_name, create_model("mnist-lc"), seed=99)  # brsf, wm: the seed is in the state
    restored.load_state_dict(state)
    if rule_name in ("brsf", "wm"):
        assert restored.feedback_step == 1
    got = gradients(restored, *batch(model, seed=2))
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_options_are_checked_by_name():
    assert rule_options("wm").mirror_noise == 1.0
    for bad in ({"mirror_noise": 0.0}, {"mirror_decay": -1.0}, {"mirror_noise": float("nan")}):
        with pytest.raises(BiopropError, match=list(bad)[0]):
            rule_options("wm", **bad)
    with pytest.raises(BiopropError, match="rule 'kp' has no option 'mirror_noise'"):
        rule_options("kp", mirror_noise=1.0)
    for name in NEW_RULES:
        cls = RULES.get(name)
        assert cls.preset_column == "fa" and cls.__doc__
    assert RULES.get("kp").group_defaults == {"feedback": "forward"} == RULES.get("wm").group_defaults
