"""The tasks (bioprop.tasks): classification is exactly the cross-entropy and argmax of before;
reconstruction's loss, output error and metric have known answers."""

import pytest
import torch
import torch.nn.functional as F

from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.tasks import TASKS, decode_images, encode_images, task_of, task_of_row
from bioprop.training import summarize

CLASSIFICATION, RECONSTRUCTION = TASKS.get("classification"), TASKS.get("reconstruction")


def test_classification_is_softmax_cross_entropy_and_argmax():
    generator = torch.Generator().manual_seed(0)
    logits, y = torch.randn(7, 10, generator=generator), torch.randint(0, 10, (7,), generator=generator)
    assert CLASSIFICATION.target(torch.zeros(7, 1, 2, 2), y) is y
    assert torch.equal(CLASSIFICATION.loss(logits, y), F.cross_entropy(logits, y))
    logits.requires_grad_()
    (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)
    torch.testing.assert_close(CLASSIFICATION.output_error(logits.detach(), y), gradient)
    assert CLASSIFICATION.metric_sum(logits, y) == (logits.argmax(1) != y).sum()
    sums = CLASSIFICATION.batch_sums(logits.detach(), y)
    assert set(sums) == {"error", "loss"}  # top-5 only beyond 10 classes
    assert CLASSIFICATION.metrics({"error": 3.0, "loss": 7.0, "top5_error": 0.0}, 7.0, 10) == \
        {"error": 100.0 * 3.0 / 7.0, "loss": 1.0}
    assert "top5_error" in CLASSIFICATION.batch_sums(torch.randn(4, 11), torch.zeros(4, dtype=torch.long))


def test_reconstruction_loss_error_and_metric_known_answer():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]], [[[1.0, 1.0], [0.0, 0.0]]]])  # 2 images of 2 x 2
    output = torch.tensor([[0.5, 1.0, 0.5, 0.75], [1.0, 0.0, 0.0, 0.0]])
    target = RECONSTRUCTION.target(x, torch.tensor([3, 4]))
    assert torch.equal(target, x.flatten(1))
    # squared errors: [0.25, 0, 0, 0.25] and [0, 1, 0, 0]; L = 1/2 sum per image, mean over images
    assert RECONSTRUCTION.loss(output, target).item() == pytest.approx((0.5 * 0.5 + 0.5 * 1.0) / 2)
    assert torch.equal(RECONSTRUCTION.output_error(output, target), output - target)
    # the metric: mean squared error per pixel, (0.125 + 0.25) / 2
    assert RECONSTRUCTION.metric_sum(output, target).item() == pytest.approx(0.125 + 0.25)
    sums = {k: v.item() for k, v in RECONSTRUCTION.batch_sums(output, target).items()}
    assert RECONSTRUCTION.metrics(sums, 2.0, 4) == pytest.approx({"reconstruction_error": 0.1875, "loss": 0.375})
    assert torch.equal(RECONSTRUCTION.best_prediction(target, 4, torch.float32), target)
    assert RECONSTRUCTION.output_units((1, 28, 28), 10) == 784


def test_output_error_is_the_gradient_of_the_summed_loss():
    output = torch.randn(5, 6, requires_grad=True)
    target = torch.randn(5, 6)
    (gradient,) = torch.autograd.grad(RECONSTRUCTION.loss(output, target) * 5, output)
    torch.testing.assert_close(RECONSTRUCTION.output_error(output.detach(), target), gradient)


def test_task_of_models_rules_and_rows():
    assert task_of(create_model("mnist-fc")) is CLASSIFICATION
    assert task_of(create_model("mnist-autoencoder")) is RECONSTRUCTION
    assert task_of(torch.nn.Linear(2, 2)) is CLASSIFICATION  # a user's module without a task attribute
    module = torch.nn.Linear(2, 2)
    module.task = "denoising"
    with pytest.raises(BiopropError, match="unknown task 'denoising'"):
        task_of(module)
    assert task_of_row({"test_error": 1.0}) is CLASSIFICATION
    assert task_of_row({"test_reconstruction_error": 0.01}) is RECONSTRUCTION


def test_summary_keys_follow_the_task():
    rows = [{"epoch": e, "train_reconstruction_error": t, "val_reconstruction_error": v,
             "test_reconstruction_error": s} for e, t, v, s in [(1, .05, .06, .061), (2, .03, .05, .052),
                                                                  (3, .02, .055, .050)]]
    summary = summarize(rows)
    assert summary == {"epochs": 3, "final_train_reconstruction_error": .02, "final_test_reconstruction_error": .050,
                       "best_test_reconstruction_error": .050, "best_test_epoch": 3,
                       "train_reconstruction_error_at_best_test": .02, "best_val_reconstruction_error": .05,
                       "best_val_epoch": 2, "test_reconstruction_error_at_best_val": .052,
                       "train_reconstruction_error_at_best_val": .03}
    classification = summarize([{"epoch": 1, "train_error": 2.0, "val_error": 3.0, "test_error": 4.0}])
    assert list(classification) == ["epochs", "final_train_error", "final_test_error", "best_test_error",
                                     "best_test_epoch", "train_error_at_best_test", "best_val_error",
                                     "best_val_epoch", "test_error_at_best_val", "train_error_at_best_val"]


def test_images_round_trip_through_base64_uint8():
    pixels = torch.rand(3, 1, 4, 4)
    pixels[0, 0, 0, 0], pixels[0, 0, 0, 1] = -0.5, 1.7  # clamped to [0, 1]
    decoded = decode_images(encode_images(pixels), [1, 4, 4])
    assert decoded.shape == (3, 1, 4, 4)
    assert (decoded - pixels.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
