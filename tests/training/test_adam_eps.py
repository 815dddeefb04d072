"""Adam's epsilon convention (``AdamConfig.eps_convention``): PyTorch adds ε to the bias-corrected
√v̂; TensorFlow (the paper's framework) to the uncorrected √v. Known answers by hand, every Adam
kernel, and a resume that continues the step count."""

import math

import pytest
import torch

from bioprop.cli.args import UsageError
from bioprop.errors import BiopropError
from bioprop.training.config import AdamConfig
from bioprop.training.trainer import make_optimizer

IMPLEMENTATIONS = ["plain", "foreach", "fused"]


def tensorflow_adam(gradients, lr, beta1, beta2, eps):
    """tf.train.AdamOptimizer's update, written out: lr_t = lr √(1-β2ᵗ)/(1-β1ᵗ), θ -= lr_t m/(√v + ε)."""
    theta, m, v, path = 0.0, 0.0, 0.0, []
    for t, g in enumerate(gradients, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        theta -= lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t) * m / (math.sqrt(v) + eps)
        path.append(theta)
    return path


def run(adam, gradients, implementation="plain"):
    parameter = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer([parameter], adam, implementation, torch.device("cpu"))
    path = []
    for g in gradients:
        parameter.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        path.append(parameter.item())
    return path, optimizer


GRADIENTS = [1e-3, -2e-3, 5e-4, 1e-3, 3e-3, -1e-3]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tensorflow_convention_is_tensorflows_update(implementation):
    adam = AdamConfig(lr=0.1, beta1=0.9, beta2=0.95, eps=1e-3, eps_convention="tensorflow")
    path, _ = run(adam, GRADIENTS, implementation)
    assert path == pytest.approx(tensorflow_adam(GRADIENTS, 0.1, 0.9, 0.95, 1e-3), rel=1e-9)


def test_the_two_conventions_differ_early_and_agree_once_beta2_power_vanishes():
    """At step 1 with |g| << ε PyTorch moves lr·|g|/(|g| + ε); TensorFlow lr·|g|/(|g| + ε/√(1-β2))."""
    g = [1e-3] * 400
    torch_path, _ = run(AdamConfig(lr=1.0, beta1=0.9, beta2=0.95, eps=1e-3), g)
    tf_path, _ = run(AdamConfig(lr=1.0, beta1=0.9, beta2=0.95, eps=1e-3, eps_convention="tensorflow"), g)
    assert -torch_path[0] == pytest.approx(1e-3 / (1e-3 + 1e-3))
    assert -tf_path[0] == pytest.approx(1e-3 / (1e-3 + 1e-3 / math.sqrt(0.05)))
    steps_late = [b - a for a, b in zip(torch_path[-3:], torch_path[-2:])]
    steps_late_tf = [b - a for a, b in zip(tf_path[-3:], tf_path[-2:])]
    assert steps_late_tf == pytest.approx(steps_late, rel=1e-9)


def test_pytorch_convention_is_torch_adam():
    adam = AdamConfig(lr=0.1, beta1=0.9, beta2=0.95, eps=1e-3)
    path, _ = run(adam, GRADIENTS)
    parameter = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    reference = torch.optim.Adam([parameter], lr=0.1, betas=(0.9, 0.95), eps=1e-3)
    expected = []
    for g in GRADIENTS:
        parameter.grad = torch.tensor([g], dtype=torch.float64)
        reference.step()
        expected.append(parameter.item())
    assert path == expected


def test_the_step_count_is_saved_with_the_optimiser_state():
    adam = AdamConfig(lr=0.1, beta1=0.9, beta2=0.95, eps=1e-3, eps_convention="tensorflow")
    straight, _ = run(adam, GRADIENTS)
    first, optimizer = run(adam, GRADIENTS[:3])
    state = optimizer.state_dict()
    parameter = torch.tensor([first[-1]], dtype=torch.float64, requires_grad=True)
    resumed = make_optimizer([parameter], adam, "plain", torch.device("cpu"))
    resumed.load_state_dict(state)
    rest = []
    for g in GRADIENTS[3:]:
        parameter.grad = torch.tensor([g], dtype=torch.float64)
        resumed.step()
        rest.append(parameter.item())
    assert first + rest == pytest.approx(straight, rel=1e-12)


def test_bad_convention_is_named():
    with pytest.raises(BiopropError, match="eps_convention"):
        AdamConfig(eps_convention="keras").validate("forward")


def test_cli_sets_the_convention_for_every_group_of_the_rule():
    from bioprop.cli import parse_args
    from bioprop.cli.train import prepare

    config, _ = prepare(parse_args(["train", "--preset", "mnist-fc-sdtp-parallel", "--eps-convention", "tensorflow"]))
    assert {group: adam.eps_convention for group, adam in config.optimizers.items()} == \
        {"forward": "tensorflow", "inverse": "tensorflow"}
    assert config.optimizers["inverse"].eps == 1e-6  # the preset's other settings stay
    config, _ = prepare(parse_args(["train", "--preset", "mnist-fc-kp", "--eps-convention", "tensorflow"]))
    assert config.optimizers["feedback"].eps_convention == "tensorflow"  # a group that follows another
    with pytest.raises(UsageError, match="--eps-convention: invalid choice: 'keras'"):
        parse_args(["train", "--preset", "mnist-fc-bp", "--eps-convention", "keras"])


# -- how much ε shrinks Adam's steps (the trainer's ``adam_step_scale`` and its warning) -------------


def test_the_step_scale_is_sqrt_v_over_sqrt_v_plus_eps():
    """A constant gradient g has v̂ = g² at every step, so the scale is |g| / (|g| + ε): 1/2 at g = ε."""
    from bioprop.training.optimizers import adam_step_scale

    weight, bias = torch.zeros(3, 4, requires_grad=True), torch.zeros(3, requires_grad=True)
    names = {weight: "weight", bias: "bias"}
    for eps, expected in ((1e-3, 0.5), (1e-1, 1e-3 / (1e-3 + 1e-1)), (1e-8, 1e-3 / (1e-3 + 1e-8))):
        optimizer = make_optimizer([weight, bias], AdamConfig(lr=1e-3, eps=eps), "plain", torch.device("cpu"))
        assert adam_step_scale(optimizer, names) == {}  # no step yet
        for _ in range(3):
            weight.grad, bias.grad = torch.full_like(weight, -1e-3), torch.full_like(bias, 1e-3)
            optimizer.step()
        assert adam_step_scale(optimizer, names) == {"weight": pytest.approx(expected, rel=1e-5)}  # no bias
    sgd = make_optimizer([weight], AdamConfig(lr=1e-3, optimizer="sgd"), "plain", torch.device("cpu"))
    weight.grad = torch.ones_like(weight)
    sgd.step()
    assert adam_step_scale(sgd, names) == {}


def test_the_trainer_records_the_step_scale_and_warns_once_when_eps_swamps_the_gradients(shared_data, tmp_path):
    from bioprop.data import DataConfig
    from bioprop.training import TrainConfig, Trainer

    def fit(eps, out):
        notes = []
        config = TrainConfig(data=DataConfig("mnist", data_dir=str(shared_data), val_size=1000), model="mnist-fc",
                             rule="bp", epochs=2, batch_size=50, eval_batch_size=500, limit_batches=4,
                             limit_eval_batches=1, device="cpu", optimizers={"forward": AdamConfig(eps=eps)})
        trainer = Trainer(config, out=out, progress=False, log=notes.append)
        trainer.fit()
        return trainer.metrics, [note for note in notes if note.startswith("warning: Adam's eps")]

    metrics, warnings = fit(1e-8, tmp_path / "small-eps")
    scales = metrics[-1]["adam_step_scale"]
    assert sorted(scales) == [f"forward/model.blocks.{i}.layer.weight" for i in range(6)]
    assert min(scales.values()) > 0.9 and not warnings
    metrics, warnings = fit(10.0, tmp_path / "huge-eps")  # gradients ~1e-3 against eps 10
    assert max(metrics[-1]["adam_step_scale"].values()) < 0.01
    assert len(warnings) == 1 and "6 weight(s)" in warnings[0] and "forward/model.blocks.0.layer.weight" in warnings[0]


def test_a_large_weight_is_read_at_evenly_spaced_elements(monkeypatch):
    from bioprop.training import optimizers

    weight = torch.zeros(64, 64, requires_grad=True)
    optimizer = make_optimizer([weight], AdamConfig(lr=1e-3, eps=1e-3), "plain", torch.device("cpu"))
    gradient = torch.full((64 * 64,), 1e-3)
    gradient[::41] = 1e-1  # the elements a 100-element sample reads (4096 // 100 + 1 = 41 apart)
    weight.grad = gradient.view(64, 64)
    optimizer.step()
    assert optimizers.adam_step_scale(optimizer, {weight: "weight"})["weight"] == pytest.approx(0.5, rel=1e-5)
    monkeypatch.setattr(optimizers, "STEP_SCALE_SAMPLE", 100)
    sampled = optimizers.adam_step_scale(optimizer, {weight: "weight"})["weight"]
    assert sampled == pytest.approx(1e-1 / (1e-1 + 1e-3), rel=1e-5)
