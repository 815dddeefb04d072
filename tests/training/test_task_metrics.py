"""Evaluation, the trainer's metrics and the rules' losses go through the model's task: classification
numbers are exactly those of an explicit cross-entropy / argmax computation (what they were before
tasks existed), and a reconstruction run reports the mean squared error per pixel and keeps test
reconstructions at its last epoch."""

import pytest
import torch
import torch.nn.functional as F

from bioprop.data import DataBundle, DataConfig, TensorSplit, dataset_info, load_data
from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import create_rule
from bioprop.tasks import decode_images
from bioprop.training import TrainConfig, Trainer, evaluate, train


def synthetic_split(n=37, classes=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
    return TensorSplit(x, torch.randint(0, classes, (n,), generator=generator), [0.13], [0.31])


def explicit(model, split, batch_size):
    """Error %, mean cross-entropy: argmax and F.cross_entropy, summed per batch in float64."""
    wrong = loss = seen = 0.0
    with torch.no_grad():
        for x, y in split.batches(batch_size, shuffle=False):
            logits = model(x).float()
            wrong += (logits.argmax(1) != y).sum().double().item()
            loss += F.cross_entropy(logits, y, reduction="sum").double().item()
            seen += len(y)
    return {"error": 100.0 * wrong / seen, "loss": loss / seen}


def test_classification_evaluation_is_the_explicit_cross_entropy_and_argmax():
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    split = synthetic_split()
    assert evaluate(model, split, batch_size=10) == explicit(model, split, 10)  # bit for bit
    rule = create_rule("sdtp", model)
    assert evaluate(rule, split, batch_size=10) == explicit(model, split, 10)


def test_reconstruction_evaluation_is_the_mean_squared_error_per_pixel():
    torch.manual_seed(0)
    model = create_model("mnist-autoencoder")
    split = synthetic_split()
    result = evaluate(model, split, batch_size=10)
    x = torch.cat([x for x, _ in split.batches(37, shuffle=False)])
    with torch.no_grad():
        error = (model(x) - x.flatten(1)).pow(2)
    assert set(result) == {"reconstruction_error", "loss"}
    assert result["reconstruction_error"] == pytest.approx(error.mean().item(), rel=1e-5)
    assert result["loss"] == pytest.approx(0.5 * error.sum(1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("rule_name", ["bp", "fa", "sdtp"])
def test_rules_on_a_classifier_return_the_explicit_cross_entropy(rule_name):
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    rule = create_rule(rule_name, model)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 1, 28, 28, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    step = rule.compute_gradients(x, y, rule.groups)
    with torch.no_grad():
        assert torch.equal(step.loss, F.cross_entropy(model(x), y))
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    last = model.blocks[-1]
    if rule_name == "bp":  # every gradient is autograd's of the cross-entropy, bit for bit
        F.cross_entropy(model(x), y).backward()
        names = [name for name, _ in model.named_parameters()]
    else:  # the output layer's gradient needs no feedback: the delta rule on the cross-entropy
        with torch.no_grad():
            below = model.blocks[0](x)
            for block in model.blocks[1:-1]:
                below = block(below)
        F.cross_entropy(last(below), y).backward()
        names = [f"blocks.{len(model.blocks) - 1}.layer.{kind}" for kind in ("weight", "bias")]
    grads = dict(model.named_parameters())
    for name in names:
        assert torch.equal(got[name], grads[name].grad), name


def run_config(shared_data, **overrides):
    values = dict(data=DataConfig("mnist", data_dir=str(shared_data), val_size=500), model="mnist-fc", rule="bp",
                  epochs=1, batch_size=50, eval_batch_size=250, limit_batches=2, limit_eval_batches=1, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("rule_name", ["bp", "fa", "sdtp"])
def test_classification_rows_are_the_explicit_numbers(shared_data, rule_name):
    result = train(run_config(shared_data, rule=rule_name), progress=False, log=lambda *a: None)
    row = result["metrics"][-1]
    assert "reconstructions" not in row and "train_error_running" in row
    x, y = first_test_batch(run_config(shared_data).data, 250)  # limit_eval_batches=1: the first batch
    numbers = explicit(result["rule"].model, TensorSplitOf(x, y), 250)
    assert (row["test_error"], row["test_loss"]) == (numbers["error"], numbers["loss"])


def test_reconstruction_run_writes_its_metrics_and_samples(shared_data, tmp_path):
    config = run_config(shared_data, model="mnist-autoencoder", data=DataConfig("mnist", data_dir=str(shared_data),
                                                                                val_size=500, normalization="none"))
    result = train(config, out=tmp_path, progress=False, log=lambda *a: None)
    row = result["metrics"][-1]
    for split in ("train", "val", "test"):
        assert 0 < row[f"{split}_reconstruction_error"] < 1 and f"{split}_error" not in row
    assert row["train_reconstruction_error_running"] > 0
    samples = row["reconstructions"]
    images = decode_images(samples["input"], samples["shape"])
    assert images.shape == (8, 1, 28, 28) and samples["split"] == "test"
    x, _ = first_test_batch(config.data, 8)
    assert (images - x).abs().max() <= 0.5 / 255 + 1e-6  # the first test images, on the [0, 1] scale
    assert decode_images(samples["output"], samples["shape"]).shape == (8, 1, 28, 28)
    assert result["summary"]["best_test_reconstruction_error"] == row["test_reconstruction_error"]


def first_test_batch(data: DataConfig, size: int):
    return next(iter(load_data(data, seed=0).test.batches(size, shuffle=False)))


class TensorSplitOf:
    """One given batch as a split (what ``explicit`` reads)."""

    def __init__(self, x, y):
        self.batch = (x, y)

    def batches(self, *args, **kwargs):
        return iter([self.batch])


def test_an_autoencoder_that_does_not_fit_the_data_is_refused_by_name():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    split = TensorSplit(images, torch.zeros(4, dtype=torch.long), [0.5] * 3, [0.25] * 3)
    bundle = DataBundle(dataset_info("cifar10"), split, None, split, {"mean": [0.5] * 3, "std": [0.25] * 3},
                        False, [str(k) for k in range(10)])
    config = TrainConfig(data=DataConfig("cifar10", val_size=0), model="mnist-autoencoder", device="cpu")
    with pytest.raises(BiopropError, match=r"'mnist-autoencoder' \(reconstruction\) expects inputs \(1, 28, 28\) "
                                           r"and gives 784 outputs.*needs 3072"):
        Trainer(config, data=bundle, progress=False)


def test_a_mid_pass_checkpoint_written_before_tasks_existed_resumes():
    from bioprop.training.trainer import PassState

    old = {"step": 3, "seconds": 1.0, "loss_sum": 6.0, "wrong": 4.0, "seen": 150, "diagnostic_sums": {},
           "diagnostic_counts": {}}
    state = PassState.from_dict(old)
    assert (state.metric_sum, state.step) == (4.0, 3)
    assert PassState.from_dict(state.to_dict()) == state
