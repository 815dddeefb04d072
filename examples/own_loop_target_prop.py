"""Target propagation (DTP, alternating schedule) in your own PyTorch loop.

    python examples/own_loop_target_prop.py [--steps 300] [--pass-length 50] [--schedule alternating]
        [--rule dtp] [--label-smoothing 0.1] [--data-dir DIR] [--synthetic]

The target-propagation rules train each block on a local loss toward a target computed by learned
inverses, so their update is not a backward pass through the network: it is
``rule.compute_gradients(x, y, groups)``, which writes ``.grad`` of the parameter groups named and
returns a ``StepResult``. The whole contract, which is also what bioprop's own trainer uses:

* ``rule.parameter_groups()`` -> ``{"forward": [...], "inverse": [...]}``: one optimiser per group;
* ``rule.passes()`` -> the groups each pass over the data trains: ``(("forward", "inverse"),)`` for
  the parallel schedule, ``(("inverse",), ("forward",))`` for the alternating one (a pass training
  only the inverses, then a pass training only the forward weights);
* per mini-batch: zero the pass's groups, ``compute_gradients``, step the pass's optimisers.

A pass here is ``--pass-length`` mini-batches (Lee et al.'s alternating schedule uses whole epochs);
``--steps`` counts mini-batches over all passes. ``--label-smoothing`` trains on your own loss
through ``task=bioprop.LossTask(...)``: the output layer's loss and DTP's output error follow it.

Trains on MNIST when a copy is found (``--data-dir``, ``$BIOPROP_DATA``, ``../shared/data``, the
cache), else on a synthetic problem; prints per pass the mean task loss and the local losses
(``StepResult.local_losses``, summed over layers), then the test error. See docs/own-loop.md.
"""

from __future__ import annotations

import argparse
import functools
from collections import defaultdict
from itertools import islice

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import bioprop
import own_loop_data
from bioprop.models import LayerSpec, build_network

TP_RULES = ("dtp", "sdtp", "ao-sdtp", "tp", "drl", "l-drl", "hybrid")


def build_rule(name: str = "dtp", schedule: str = "alternating", seed: int = 0, label_smoothing: float = 0.0):
    """A 784-256-256-256-10 tanh network (any stack of fc / lc / conv blocks works) and the rule around it."""
    torch.manual_seed(seed)
    network = build_network("my-mlp", (1, 28, 28), [LayerSpec("fc", 256)] * 3, num_classes=10)
    options = {"schedule": schedule, "noise": 0.2}
    if name == "dtp":
        options["alpha"] = 0.2
    task = None  # the network's own task: softmax cross-entropy
    if label_smoothing:
        loss = functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
        task = bioprop.LossTask(loss, like="classification", name="label-smoothed")
    return bioprop.create_rule(name, network, seed=seed, task=task, **options)


def batches(loader: DataLoader):
    """Mini-batches forever, reshuffled each time the loader is exhausted."""
    while True:
        yield from loader


def train(rule, data, steps: int, pass_length: int, batch_size: int, lrs: dict[str, float]) -> list[dict]:
    """The loop; it asks the rule what to train and never branches on the rule."""
    optimizers = {group: torch.optim.Adam(params, lr=lrs[group])
                  for group, params in rule.parameter_groups().items()}
    stream = batches(DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                                generator=torch.Generator().manual_seed(0)))
    rule.train()
    history, done = [], 0
    while done < steps:
        for groups in rule.passes():
            sums, count = defaultdict(float), 0
            for x, y in islice(stream, min(pass_length, steps - done)):
                for group in groups:
                    optimizers[group].zero_grad()
                step = rule.compute_gradients(x, y, groups)   # .grad of exactly these groups
                for group in groups:
                    optimizers[group].step()
                sums["task loss"] += step.loss.item()
                for name, value in step.local_losses.items():  # forward_loss/layer2, inverse_loss/layer3, ...
                    sums[name.split("_")[0] + " losses"] += value.item()  # summed over layers
                count += 1
            done += count
            if count:
                row = {"step": done, "groups": groups, **{k: v / count for k, v in sums.items()}}
                history.append(row)
                print(f"step {done:5d}  trained {'+'.join(groups):<16} " +
                      "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("step", "groups")))
            if done >= steps:
                break
    return history


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="dtp", choices=TP_RULES)
    parser.add_argument("--schedule", default="alternating", choices=("alternating", "parallel"))
    own_loop_data.add_arguments(parser)  # --steps (over all passes), --batch-size, --lr, --seed, --data-dir, ...
    parser.add_argument("--pass-length", type=int, default=50, help="mini-batches per pass")
    parser.add_argument("--inverse-lr", type=float, default=1e-3, help="Adam learning rate of the inverses")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    args = parser.parse_args(argv)

    train_set, test_set, source = own_loop_data.load(args.data_dir, args.synthetic)
    rule = build_rule(args.rule, args.schedule, args.seed, args.label_smoothing)
    print(f"{args.rule} ({args.schedule}; passes {rule.passes()}; task {rule.task.name}) on "
          f"784-256-256-256-10, {source}: {args.steps} steps of {args.batch_size}")
    history = train(rule, train_set, args.steps, args.pass_length, args.batch_size,
                    {"forward": args.lr, "inverse": args.inverse_lr})
    error = own_loop_data.test_error(rule, test_set)  # rule(x): the network's output
    print(f"test error {error:.2f}%")
    return {"history": history, "test_error": error, "rule": rule}


if __name__ == "__main__":
    main()
