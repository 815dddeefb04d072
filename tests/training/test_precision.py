"""``--precision``: bf16 autocast keeps float32 master weights, gradients and optimiser states,
and its updates point where the float32 ones do; target propagation stays numerically sane."""

import pytest
import torch

from bioprop.models import create_model
from bioprop.rules import RULES, create_rule
from bioprop.training import precision

MODELS = ["mnist-fc", "mnist-lc", "mnist-conv"]


def gradients(rule_name, model_name, bf16):
    torch.manual_seed(0)
    rule = create_rule(rule_name, create_model(model_name), seed=0)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, *rule.model.input_shape, generator=generator)
    y = torch.randint(0, 10, (16,), generator=generator)
    torch.manual_seed(2)  # the same noise in both precisions
    with precision.autocast("bf16" if bf16 else "fp32", torch.device("cpu")):
        step = rule.compute_gradients(x, y, tuple(rule.parameter_groups()))
    named = dict(rule.named_parameters())
    return {name: p.grad for name, p in named.items()}, step


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("rule_name", RULES.names())
def test_bf16_gradients_are_float32_and_point_where_the_float32_ones_do(rule_name, model_name):
    reference, reference_step = gradients(rule_name, model_name, bf16=False)
    low, step = gradients(rule_name, model_name, bf16=True)
    for name, grad in low.items():
        assert grad is not None and grad.dtype == torch.float32, name  # master weights and their grads stay fp32
        assert torch.isfinite(grad).all(), name
        if reference[name].norm() > 0:
            assert cosine(grad, reference[name]) > 0.95, name
    assert step.loss.dtype == torch.float32
    assert step.loss.item() == pytest.approx(reference_step.loss.item(), rel=0.05)
    for name, value in step.local_losses.items():  # TP's local losses: finite and close to fp32
        assert torch.isfinite(value) and value.item() == pytest.approx(reference_step.local_losses[name].item(),
                                                                       rel=0.1, abs=1e-4), name


@pytest.mark.parametrize("world_size", [1, 2])
def test_tp_noise_is_float32_and_the_float32_runs_noise_under_bf16(world_size):
    rule = create_rule("dtp", create_model("mnist-fc"))
    rule.set_data_parallel(world_size - 1, world_size)
    clean = torch.randn(8, 240)
    torch.manual_seed(5)
    reference = rule.noise_like(clean, 0.2)
    torch.manual_seed(5)
    low = rule.noise_like(clean.bfloat16(), 0.2)
    assert low.dtype == torch.float32 and torch.equal(low, reference)


def test_targets_are_computed_in_float32_under_autocast():
    torch.manual_seed(0)
    rule = create_rule("dtp", create_model("mnist-fc"))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = [h.detach() for h in rule.forward_blocks(x, grad=False)]
        assert hidden[0].dtype == torch.bfloat16
        targets = rule.targets(hidden, y)
    assert all(t.dtype == torch.float32 for t in targets)


def test_tf32_is_a_process_switch_and_fp32_turns_it_off():
    precision.configure("tf32")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    precision.configure("fp32")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("rule_name", ["bp", "sdtp"])
def test_a_bf16_run_trains_with_float32_weights_and_adam_states(shared_data, rule_name):
    from bioprop.data import DataConfig
    from bioprop.training import TrainConfig, Trainer

    config = TrainConfig(data=DataConfig("mnist", data_dir=str(shared_data), val_size=1000), model="mnist-fc",
                         rule=rule_name, epochs=1, batch_size=50, limit_batches=40, limit_eval_batches=2,
                         train_eval_size=500, device="cpu", precision="bf16")
    trainer = Trainer(config, progress=False, log=lambda *a: None)
    (row,) = trainer.fit()
    assert row["test_error"] < 40  # it learned (chance is 90%)
    assert all(p.dtype == torch.float32 for p in trainer.rule.parameters())
    for optimizer in trainer.optimizers.values():
        for state in optimizer.state.values():
            assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
