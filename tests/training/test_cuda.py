"""CUDA against the CPU: every rule on every kind of layer, a few steps from the same seed, to
float tolerance; a whole CUDA run with the data held on the GPU; bf16 on CUDA; the ImageNet-LC
LC shapes. Run with ``pytest -m gpu`` on a machine with a GPU (``bench/gpu_check.sh``)."""

import pytest
import torch

from bioprop.models import create_model
from bioprop.rules import RULES, create_rule
from bioprop.rules.base import LearningRule
from bioprop.training.trainer import make_optimizer
from bioprop.training import AdamConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cpu_draw(kind, shape, seed, device, dtype):
    """Per-batch draws on the CPU generator, then moved: the same numbers on both devices."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(shape, generator=generator, dtype=dtype).to(device)


def train_steps(rule_name, model_name, device, steps=3):
    torch.manual_seed(0)
    rule = create_rule(rule_name, create_model(model_name), seed=0).to(device)
    optimizers = {g: make_optimizer(p, AdamConfig(lr=1e-3), "plain") for g, p in rule.parameter_groups().items()}
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, *rule.model.input_shape, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        noise = torch.Generator().manual_seed(100 + step)
        if hasattr(rule, "noise_like"):  # target propagation: the same noise on both devices
            rule.noise_like = lambda clean, sigma, g=noise: torch.randn(clean.shape, generator=g).to(clean.device) * sigma
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        rule.compute_gradients(x.to(device), y.to(device), tuple(optimizers))
        for optimizer in optimizers.values():
            optimizer.step()
    return {k: v.detach().cpu() for k, v in rule.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.parametrize("model_name", ["mnist-fc", "mnist-lc", "mnist-conv"])
@pytest.mark.parametrize("rule_name", RULES.names())
def test_every_rule_on_cuda_matches_the_cpu(rule_name, model_name, monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    monkeypatch.setattr(LearningRule, "seeded_draw", staticmethod(cpu_draw))  # brsf, wm: device RNGs differ
    cpu, cuda = train_steps(rule_name, model_name, "cpu"), train_steps(rule_name, model_name, "cuda")
    for key in cpu:
        torch.testing.assert_close(cuda[key], cpu[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_a_cuda_run_keeps_the_data_on_the_gpu_and_learns(shared_data, precision):
    from bioprop.data import DataConfig
    from bioprop.training import TrainConfig, Trainer

    config = TrainConfig(data=DataConfig("mnist", data_dir=str(shared_data), val_size=1000), model="mnist-lc",
                         rule="dtp", epochs=1, batch_size=100, limit_batches=100, device="cuda",
                         precision=precision, train_eval_size=2000)
    trainer = Trainer(config, progress=False, log=lambda *a: None)
    assert trainer.data.train.x.is_cuda  # batched, augmented and normalised on the GPU
    (row,) = trainer.fit()
    assert row["test_error"] < 20


def test_imagenet_lc_layer_and_its_transpose_on_cuda_match_float64():
    from bioprop.nn import LocallyConnected2d

    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 64, in_size=56, kernel_size=3, stride=2).cuda()  # an ImageNet-LC-like shape
    x = torch.randn(4, 3, 56, 56, device="cuda", requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, layer.weight), grad_out)
    reference = layer.double()
    x64 = x.detach().double().requires_grad_()
    out64 = reference(x64)
    grads64 = torch.autograd.grad(out64, (x64, reference.weight), grad_out.double())
    torch.testing.assert_close(out.double(), out64, rtol=1e-4, atol=1e-4)
    for grad, grad64 in zip(grads, grads64):
        torch.testing.assert_close(grad.double(), grad64, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(reference.transpose(grad_out.double()), grads64[0], rtol=1e-6, atol=1e-6)
