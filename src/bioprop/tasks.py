"""What a network is trained to do: its loss, what the loss compares the output with, and the
metrics a run reports. Registry :data:`TASKS`.

=================  ==================================================================================
``classification``  softmax cross-entropy against the class labels y, averaged over the batch;
                    metrics: ``error`` (top-1, %), ``top5_error`` (%, more than 10 classes), ``loss``
                    (mean cross-entropy). Every network of Bartunov et al. (2018) Tables 1-2.
``reconstruction``  the input itself is the target: L = ½ ||h_L - x||² summed over units, averaged over
                    the batch (Lee et al.'s DTP code reduces its squared errors this way); metrics:
                    ``reconstruction_error`` = mean squared error per pixel (the mean over units and
                    examples of (h_L - x)², i.e. 2 L / units), in the units of the input the network
                    sees, and ``loss`` (mean L). The MNIST autoencoder of App. 5.5 (Figs. 6-7), whose
                    presets feed pixels / 255, so this is the per-pixel error on the [0, 1] scale
                    that Fig. 6 plots (0.005-0.02).
=================  ==================================================================================

A model says its task by a ``task`` attribute (a registered name; absent: classification), as the
zoo's networks do (:class:`~bioprop.models.Network`); :func:`task_of` reads it. Everything that
used to hard-code cross-entropy and ``argmax`` asks the task: every rule's ``compute_gradients``
(the loss, and the output error e = ∂(Σ_n L_n)/∂h_L that DTP, DFA-style and DRL targets use),
target propagation's first target (:meth:`Task.prediction`, :meth:`Task.best_prediction`),
evaluation, the trainer's metrics rows and :func:`~bioprop.training.results.summarize`. The row
keys are ``{split}_{metric}``: ``test_error`` for classification, exactly as before, and
``test_reconstruction_error`` for reconstruction.
"""

from __future__ import annotations

import base64
import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from bioprop.errors import BiopropError
from bioprop.registry import Registry

TASKS: Registry = Registry("task")
#: test images whose reconstructions a reconstruction run keeps at its last epoch (Fig. 7)
SAMPLE_COUNT = 8


def register_task(cls):
    """Class decorator: registers one instance of a :class:`Task` subclass under ``cls.name``."""
    TASKS.register(cls.name)(cls())
    return cls


class Task:
    """The interface; ``output`` is the network's output h_L (logits for classification), ``target``
    what :meth:`target` returns for the batch."""

    name: ClassVar[str] = ""
    #: the metrics-row key stem: ``train_{metric}``, ``test_{metric}``, ``train_{metric}_running``
    metric: ClassVar[str] = ""
    #: the sums evaluation accumulates over a split (names of :meth:`batch_sums`), in a fixed order
    sums: ClassVar[tuple[str, ...]] = ()

    def output_units(self, input_shape: tuple[int, ...], num_classes: int | None) -> int:
        """How many outputs a network for this task has on data of ``input_shape`` and ``num_classes``."""
        raise NotImplementedError

    def target(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the loss compares the output with, for a batch of inputs ``x`` and labels ``y``."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training objective L, averaged over the batch."""
        raise NotImplementedError

    def output_error(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """e = ∂(Σ_n L_n)/∂h_L: each example's own output error (the batch-mean loss's is e / N)."""
        raise NotImplementedError

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """The output in the space where the loss has its minimiser (what an output inverse reads)."""
        raise NotImplementedError

    def best_prediction(self, target: torch.Tensor, units: int, dtype: torch.dtype) -> torch.Tensor:
        """argmin over the prediction of L: SDTP's and TP's first target ĥ_L, ``(N, units)``."""
        raise NotImplementedError

    def metric_sum(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's sum of the per-example metric, before :meth:`running_metric` scales it."""
        raise NotImplementedError

    def running_metric(self, total: float, seen: float) -> float:
        """The reported metric from the running :meth:`metric_sum` total over ``seen`` examples."""
        return total / max(seen, 1)

    def batch_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the batch that evaluation accumulates (names from :attr:`sums`)."""
        raise NotImplementedError

    def metrics(self, totals: dict[str, float], seen: float, output_units: int) -> dict[str, float]:
        """The reported metrics of a split from the accumulated :meth:`batch_sums`."""
        raise NotImplementedError

    def format_metric(self, value: float) -> str:
        return f"{value:.5f}"

    def samples(self, model, split, normalization: dict, device, autocast) -> dict:
        """Extra entries of the last epoch's metrics row (reconstruction: images for Fig. 7)."""
        return {}


@register_task
class Classification(Task):
    name = "classification"
    metric = "error"
    sums = ("error", "top5_error", "loss")

    def output_units(self, input_shape, num_classes):
        return num_classes

    def target(self, x, y):
        return y

    def loss(self, output, target):
        return F.cross_entropy(output, target)

    def output_error(self, output, target):
        return torch.softmax(output, dim=1) - F.one_hot(target, output.shape[1]).to(output.dtype)

    def prediction(self, output):
        return torch.softmax(output, dim=1)

    def best_prediction(self, target, units, dtype):
        return F.one_hot(target, units).to(dtype)

    def metric_sum(self, output, target):
        return (output.argmax(1) != target).sum()

    def running_metric(self, total, seen):
        return 100.0 * total / max(seen, 1)

    def batch_sums(self, output, target):
        sums = {"error": (output.argmax(1) != target).sum(),
                "loss": F.cross_entropy(output, target, reduction="sum")}
        if output.shape[1] > 10:
            sums["top5_error"] = (~(output.topk(5, dim=1).indices == target[:, None]).any(1)).sum()
        return sums

    def metrics(self, totals, seen, output_units):
        result = {"error": 100.0 * totals["error"] / seen, "loss": totals["loss"] / seen}
        if output_units > 10:
            result["top5_error"] = 100.0 * totals["top5_error"] / seen
        return result

    def format_metric(self, value):
        return f"{value:6.2f}%"


@register_task
class Reconstruction(Task):
    name = "reconstruction"
    metric = "reconstruction_error"
    sums = ("reconstruction_error", "loss")

    def output_units(self, input_shape, num_classes):
        return math.prod(input_shape)

    def target(self, x, y):
        return x.flatten(1)

    def loss(self, output, target):
        return F.mse_loss(output, target, reduction="sum") * (0.5 / output.shape[0])

    def output_error(self, output, target):
        return output - target

    def prediction(self, output):
        return output

    def best_prediction(self, target, units, dtype):
        return target.to(dtype)

    def metric_sum(self, output, target):
        return (output - target).pow(2).mean(1).sum()

    def batch_sums(self, output, target):
        return {"reconstruction_error": self.metric_sum(output, target),
                "loss": 0.5 * F.mse_loss(output, target, reduction="sum")}

    def metrics(self, totals, seen, output_units):
        return {"reconstruction_error": totals["reconstruction_error"] / seen, "loss": totals["loss"] / seen}

    @torch.no_grad()
    def samples(self, model, split, normalization, device, autocast):
        """``{"reconstructions": ...}``: the first :data:`SAMPLE_COUNT` images of ``split`` (the test
        split, in its order) and ``model``'s reconstructions (in eval mode), on the pixel scale (the
        split's normalisation undone), clamped to [0, 1] and stored as base64 uint8
        (:func:`encode_images`; ~17 kB a run)."""
        x, _ = next(iter(split.batches(SAMPLE_COUNT, shuffle=False, device=device)))
        was_training = model.training
        try:
            with autocast():
                output = model.eval()(x)
        finally:
            model.train(was_training)
        shape = (-1, x.shape[1]) + (1,) * (x.dim() - 2)
        mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(normalization["std"], dtype=torch.float32, device=x.device).view(shape)
        images = [x.float() * std + mean, output.float().reshape(x.shape) * std + mean]
        return {"reconstructions": {"split": "test", "count": len(x), "shape": list(x.shape[1:]),
                                    "input": encode_images(images[0]), "output": encode_images(images[1])}}


def encode_images(pixels: torch.Tensor) -> str:
    """Images on the [0, 1] scale as base64 of their uint8 values (round(255 p), clamped)."""
    values = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return base64.b64encode(values.numpy().tobytes()).decode("ascii")


def decode_images(text: str, shape: list[int]) -> torch.Tensor:
    """The inverse of :func:`encode_images`: float images ``(n, *shape)`` on the [0, 1] scale."""
    values = torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
    return values.float().div(255).reshape(-1, *shape)


def task_of(module) -> Task:
    """The task of a model (its ``task`` attribute: a registered name or a :class:`Task`; absent:
    classification), or of a learning rule (its model's)."""
    value = getattr(module, "task", "classification")
    if isinstance(value, Task):
        return value
    if isinstance(value, str):
        return TASKS.get(value)
    raise BiopropError(f"{type(module).__name__}.task must name a task ({', '.join(TASKS.names())}), "
                       f"got {value!r}")


def task_of_row(row: dict) -> Task:
    """The task whose test metric a metrics row holds (classification when none matches)."""
    for name in TASKS.names():
        task = TASKS.get(name)
        if f"test_{task.metric}" in row:
            return task
    return TASKS.get("classification")


def task_of_summary(summary: dict) -> Task:
    """The task whose metrics a run summary (:func:`bioprop.training.summarize`) holds."""
    return task_of_row({key.removeprefix("final_"): value for key, value in summary.items()})
