"""A model's metrics on a split, as its task defines them (:mod:`bioprop.tasks`): error rates
(top-1, and top-5 for more than 10 classes) and mean cross-entropy for classification; mean squared
error per pixel and mean loss for reconstruction. A learning rule is scored on its own inference,
``rule.predict(x)`` (:func:`predict`), which is the network's forward pass unless the rule defines
another (Forward-Forward's label sweep, equilibrium propagation's free phase)."""

from __future__ import annotations

import contextlib
from itertools import islice

import torch

from bioprop.rules.base import LearningRule
from bioprop.tasks import task_of
from bioprop.training.distributed import DataParallel


def predict(rule_or_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``rule_or_model`` predicts for ``x``: a learning rule's :meth:`~bioprop.rules.LearningRule.predict`,
    any other module's forward pass."""
    return rule_or_model.predict(x) if isinstance(rule_or_model, LearningRule) else rule_or_model(x)


@torch.no_grad()
def evaluate(rule_or_model: torch.nn.Module, split, batch_size: int = 1000, device="cpu",
             limit_batches: int | None = None, *, size: int | None = None, seed: int = 0,
             autocast=contextlib.nullcontext, parallel: DataParallel | None = None) -> dict[str, float]:
    """The task's metrics on ``split`` (a rule: its model's task): for classification ``error`` (%),
    ``top5_error`` (%, when there are more than 10 classes) and ``loss``; for reconstruction
    ``reconstruction_error`` (mean squared error per pixel) and ``loss``.

    A rule is scored on ``rule.predict(x)`` (:func:`predict`). ``size``: evaluate a fixed subset of
    that many examples (the first ones of a permutation that depends only on ``seed``: the same
    subset after every epoch). ``parallel``: each
    process evaluates its shard and the counts are summed (examples that the shards repeat to
    even out their sizes are counted once). Never augmented.
    """
    parallel = parallel or DataParallel()
    task = task_of(rule_or_model)
    was_training = rule_or_model.training
    rule_or_model.eval()
    total = len(split) if size is None else min(size, len(split))
    rank, world = parallel.rank, parallel.world_size
    local_batch = max(1, batch_size // world)
    batches = split.batches(local_batch, shuffle=size is not None, seed=seed, epoch="train-eval",
                            device=device, rank=rank, world_size=world)
    # counts stay on the device: one synchronisation per evaluation, not one per batch
    counts = torch.zeros(1 + len(task.sums), dtype=torch.float64, device=device)  # seen, then task.sums
    outputs = 0
    # row i of this shard is example number rank + world * i of the (permuted) split: keep the
    # first ``mine`` rows (the shards wrap around to even out their sizes; a subset stops early)
    mine, done = -(-(total - rank) // world), 0
    for x, y in islice(batches, limit_batches):
        keep = min(len(y), mine - done)
        done += len(y)
        if keep <= 0:
            break
        if keep < len(y):
            x, y = x[:keep], y[:keep]
        with autocast():
            output = predict(rule_or_model, x)
        output = output.float()
        outputs = output.shape[1]
        sums = task.batch_sums(output, task.target(x, y))
        counts[0] += len(y)  # a Python number: no host-to-device copy per batch
        for index, name in enumerate(task.sums, start=1):
            if name in sums:
                counts[index] += sums[name].double()
    rule_or_model.train(was_training)
    seen, *totals = parallel.sum(counts).tolist()
    return task.metrics(dict(zip(task.sums, totals)), seen, outputs)
