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

Your own loss (``docs/own-loop.md``): :class:`LossTask` makes a task of any loss function
(regression with MSE, label-smoothed cross-entropy, ...), and a rule takes it with
``create_rule(name, model, task=...)`` or ``rule.task = ...`` (:func:`as_task`: a registered name,
a :class:`Task`, or a bare loss callable). A model may also carry a :class:`Task` instance in its
``task`` attribute.
"""

from __future__ import annotations

import base64
import math
from typing import Callable, ClassVar

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
        """e = ∂(Σ_n L_n)/∂h_L: each example's own output error (the batch-mean loss's is e / N).

        Default: by autograd from :meth:`loss` (:func:`loss_gradient`), exact for any batch-mean loss;
        the built-in tasks override it with the closed form."""
        return loss_gradient(self.loss, output, target)

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
        split, in its order) and ``model``'s reconstructions (in eval mode; a learning rule's
        ``predict``), on the pixel scale (the split's normalisation undone), clamped to [0, 1] and
        stored as base64 uint8 (:func:`encode_images`; ~17 kB a run)."""
        from bioprop.training.evaluation import predict  # tasks is imported by the rules and the trainer

        x, _ = next(iter(split.batches(SAMPLE_COUNT, shuffle=False, device=device)))
        was_training = model.training
        try:
            with autocast():
                output = predict(model.eval(), x)
        finally:
            model.train(was_training)
        shape = (-1, x.shape[1]) + (1,) * (x.dim() - 2)
        mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(normalization["std"], dtype=torch.float32, device=x.device).view(shape)
        images = [x.float() * std + mean, output.float().reshape(x.shape) * std + mean]
        return {"reconstructions": {"split": "test", "count": len(x), "shape": list(x.shape[1:]),
                                    "input": encode_images(images[0]), "output": encode_images(images[1])}}


def loss_gradient(loss: Callable, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """N ∂loss(output, target)/∂output for a batch of N: each example's own output error when ``loss`` is
    the mean over the batch of per-example losses. Computed by autograd on a detached copy of ``output``,
    also when called under ``torch.no_grad()`` (target propagation computes its targets there)."""
    output = output.detach().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(loss(output, target) * output.shape[0], output)
    return gradient


class LossTask(Task):
    """A task made of your own loss function, for any rule (``docs/own-loop.md``)::

        regression = LossTask(F.mse_loss)                                   # targets y of the output's shape
        smoothed = LossTask(lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1), like="classification")
        rule = bioprop.create_rule("dtp", network, task=regression)        # or rule.task = regression

    ``loss(output, target)`` returns a scalar, the **mean over the batch** of per-example losses (as
    ``F.cross_entropy`` and ``F.mse_loss`` do by default), differentiable in ``output``. It is what every
    rule trains on: the loss back-propagated by BP, FA and the other feedback rules, the error DFA sends
    to the hidden layers, the output layer's loss and the output error e = ∂(Σ_n L_n)/∂h_L of the
    target-propagation rules (computed by autograd from ``loss``, :func:`loss_gradient`, so exact for any
    loss). What the loss is not enough to say comes from ``like``:

    * ``like=None`` (regression): the target is the batch's ``y`` as given; the prediction an output
      inverse reads (TP, SDTP, AO-SDTP) is the output itself and its best value the target itself (the
      minimiser of any loss that vanishes at output == target; integer labels: their one-hot vectors);
      the one metric is the mean loss, ``loss``; ``output_units`` is unknown (build the network yourself).
    * ``like="classification"``, ``"reconstruction"`` (or any :class:`Task`): that task's target,
      prediction, best prediction, output width and metrics (error %, ...), whose ``loss`` entry is this
      loss. For label smoothing the best prediction stays the one-hot label.

    ``target(x, y)``, when given, replaces what the loss compares the output with (e.g.
    ``lambda x, y: x.flatten(1)`` to reconstruct the input). ``name`` is how messages name the task.
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, like: "str | Task | None" = None,
                 target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, name: str = "custom"):
        if not callable(loss) or isinstance(loss, (type, Task)):
            raise BiopropError(f"LossTask needs a loss function loss(output, target) -> scalar, got {loss!r}")
        if target is not None and not callable(target):
            raise BiopropError(f"LossTask target must be a function target(x, y) -> tensor, got {target!r}")
        if like is not None and not isinstance(like, (str, Task)):
            raise BiopropError(f"LossTask like= names a task ({', '.join(TASKS.names())}) or is a Task, got {like!r}")
        self.loss_function, self.target_function, self.name = loss, target, name
        self.like = None if like is None else as_task(like)
        if self.like is not None:
            self.metric, self.sums = self.like.metric, self.like.sums
        else:
            self.metric, self.sums = "loss", ("loss",)

    def __repr__(self) -> str:
        like = f", like={self.like.name!r}" if self.like is not None else ""
        return f"LossTask({getattr(self.loss_function, '__name__', self.loss_function)!r}{like}, name={self.name!r})"

    def loss(self, output, target):
        return self.loss_function(output, target)

    def target(self, x, y):
        if self.target_function is not None:
            return self.target_function(x, y)
        return self.like.target(x, y) if self.like is not None else y

    def output_units(self, input_shape, num_classes):
        if self.like is None:
            raise BiopropError(f"task {self.name!r} does not know how many outputs a network needs; build the "
                               f"network yourself, or give LossTask like='classification' / 'reconstruction'")
        return self.like.output_units(input_shape, num_classes)

    def prediction(self, output):
        return self.like.prediction(output) if self.like is not None else output

    def best_prediction(self, target, units, dtype):
        if self.like is not None:
            return self.like.best_prediction(target, units, dtype)
        if not target.is_floating_point():
            return F.one_hot(target, units).to(dtype)
        return target.reshape(target.shape[0], units).to(dtype)

    def _loss_sum(self, output, target):
        return self.loss(output, target).detach() * output.shape[0]

    def metric_sum(self, output, target):
        return self.like.metric_sum(output, target) if self.like is not None else self._loss_sum(output, target)

    def running_metric(self, total, seen):
        return self.like.running_metric(total, seen) if self.like is not None else total / max(seen, 1)

    def batch_sums(self, output, target):
        sums = self.like.batch_sums(output, target) if self.like is not None else {}
        if "loss" in self.sums:
            sums["loss"] = self._loss_sum(output, target)
        return sums

    def metrics(self, totals, seen, output_units):
        if self.like is not None:
            return self.like.metrics(totals, seen, output_units)
        return {"loss": totals["loss"] / seen}

    def format_metric(self, value):
        return self.like.format_metric(value) if self.like is not None else super().format_metric(value)

    def samples(self, model, split, normalization, device, autocast):
        return self.like.samples(model, split, normalization, device, autocast) if self.like is not None else {}


def as_task(value) -> Task:
    """The task a user means: a registered name (``"classification"``), a :class:`Task` (e.g. a
    :class:`LossTask`), or a bare loss function ``loss(output, target)``, which becomes ``LossTask(loss)``."""
    if isinstance(value, Task):
        return value
    if isinstance(value, str):
        return TASKS.get(value)
    if callable(value) and not isinstance(value, type):
        return LossTask(value)
    raise BiopropError(f"a task is a name ({', '.join(TASKS.names())}), a bioprop.tasks.Task (e.g. "
                       f"LossTask(my_loss)) or a loss function loss(output, target), got {value!r}")


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
    classification), or of a learning rule (``rule.task``: the one given to ``create_rule(task=...)``,
    else its model's)."""
    value = getattr(module, "task", "classification")
    if isinstance(value, Task):
        return value
    if isinstance(value, str):
        return TASKS.get(value)
    raise BiopropError(f"{type(module).__name__}.task must name a task ({', '.join(TASKS.names())}), "
                       f"got {value!r}")


def task_of_row(row: dict) -> Task:
    """The task whose test metric a metrics row holds (classification when none matches). Tasks whose
    metric is the bare ``loss`` (registered :class:`LossTask` s) come last: every row holds a loss."""
    for name in sorted(TASKS.names(), key=lambda name: TASKS.get(name).metric == "loss"):
        task = TASKS.get(name)
        if f"test_{task.metric}" in row:
            return task
    return TASKS.get("classification")


def task_of_summary(summary: dict) -> Task:
    """The task whose metrics a run summary (:func:`bioprop.training.summarize`) holds."""
    return task_of_row({key.removeprefix("final_"): value for key, value in summary.items()})
