"""Error rates of a model on a split: top-1 (and top-5 for more than 10 classes) and mean loss."""

from __future__ import annotations

import contextlib
from itertools import islice

import torch
import torch.nn.functional as F

from bioprop.training.distributed import DataParallel


@torch.no_grad()
def evaluate(rule_or_model: torch.nn.Module, split, batch_size: int = 1000, device="cpu",
             limit_batches: int | None = None, *, size: int | None = None, seed: int = 0,
             autocast=contextlib.nullcontext, parallel: DataParallel | None = None) -> dict[str, float]:
    """Error (%), top-5 error (%, when there are more than 10 classes) and mean loss on ``split``.

    ``size``: evaluate a fixed subset of that many examples (the first ones of a permutation
    that depends only on ``seed``: the same subset after every epoch). ``parallel``: each
    process evaluates its shard and the counts are summed (examples that the shards repeat to
    even out their sizes are counted once). Never augmented.
    """
    parallel = parallel or DataParallel()
    was_training = rule_or_model.training
    rule_or_model.eval()
    total = len(split) if size is None else min(size, len(split))
    rank, world = parallel.rank, parallel.world_size
    local_batch = max(1, batch_size // world)
    batches = split.batches(local_batch, shuffle=size is not None, seed=seed, epoch="train-eval",
                            device=device, rank=rank, world_size=world)
    # counts stay on the device: one synchronisation per evaluation, not one per batch
    counts = torch.zeros(4, dtype=torch.float64, device=device)  # seen, wrong, wrong top-5, loss sum
    classes = 0
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
            logits = rule_or_model(x)
        logits = logits.float()
        classes = logits.shape[1]
        loss = F.cross_entropy(logits, y, reduction="sum")
        wrong = (logits.argmax(1) != y).sum()
        wrong_top5 = (~(logits.topk(5, dim=1).indices == y[:, None]).any(1)).sum() if classes > 10 else 0
        counts[0] += len(y)  # a Python number: no host-to-device copy per batch
        counts[1] += wrong.double()
        counts[3] += loss.double()
        if classes > 10:
            counts[2] += wrong_top5.double()
    rule_or_model.train(was_training)
    seen, wrong, wrong_top5, loss_sum = parallel.sum(counts).tolist()
    result = {"error": 100.0 * wrong / seen, "loss": loss_sum / seen}
    if classes > 10:
        result["top5_error"] = 100.0 * wrong_top5 / seen
    return result
