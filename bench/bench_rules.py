"""Training time per batch of every learning rule, relative to backprop, on the same network and batch.

For each network (``mnist-fc``, ``mnist-lc``, ``cifar-lc`` by default) every rule is timed in one
run, interleaved: each repeat builds every variant afresh (same seed), runs a few warm-up batches,
then times a fixed number of training batches (``--batches``, default 20; ``--large-batches``,
default 4, for the CIFAR/ImageNet shapes, to stay within ~3 minutes on 2 CPU cores) exactly as
the trainer runs them (zero_grad, ``compute_gradients``, one Adam step per trained group from the
trainer's ``make_optimizer``, ``loss.item()``), on random data of the network's input shape. The
median over repeats is reported, with the ratio to BP. The epoch time is estimated as the
number of training batches of the default split (50k MNIST / 45k CIFAR-10 examples) times the
time per batch, plus the evaluation of the validation and test splits (20k / 15k examples, timed
with each rule's inference, ``rule.predict``: the network's forward pass for most rules, one pass
per label for Forward-Forward).

Target-propagation diagnostics run every ``diagnostics_every`` (default 20) batches; their cost is
measured once per variant (batches with diagnostics on every batch) and added amortised:
``t = t_train + (t_with_diagnostics - t_train) / 20``.

Variants: every registered rule (target propagation with the parallel schedule), and dtp with the
alternating schedule (the mean of a batch of an inverse epoch and a batch of a forward epoch).

``--compile`` times every variant twice, eager and with each block of the network compiled
(``nn.Module.compile``, TorchInductor; named ``rule+compile``), after warm-up batches that compile.

    python bench/bench_rules.py [--models mnist-fc mnist-lc cifar-lc] [--batches 20] [--large-batches 4]
                                [--repeats 3] [--threads T] [--fused-adam] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time

import torch
import torch._dynamo

from bioprop.models import create_model
from bioprop.rules import RULES, create_rule
from bioprop.training.config import AdamConfig
from bioprop.training.trainer import make_optimizer

DEFAULT_BATCH = {"mnist": 100, "cifar": 128, "imagenet": 16}
# (training examples, evaluated examples) per epoch: the trainer's default splits (10k validation for MNIST,
# 5k for CIFAR-10) and the 10k test set; used for the epoch-time estimate
EPOCH_EXAMPLES = {"mnist": (50_000, 20_000), "cifar": (45_000, 15_000), "imagenet": (1_271_167, 60_000)}
VARIANTS = ([("bp", "parallel")] + [(name, "parallel") for name in RULES.names() if name != "bp"]
            + [("dtp", "alternating")])  # every registered rule, BP first
TP_RULES = {name for name in RULES.names() if "inverse" in RULES.get(name).groups}


def variant_name(rule, schedule, compiled=False):
    name = rule if schedule == "parallel" or rule not in TP_RULES else f"{rule}-{schedule[:3]}"
    return name + ("+compile" if compiled else "")


def build(model_name, rule_name, schedule, fused_adam=False, compiled=False):
    torch.manual_seed(0)
    model = create_model(model_name)
    if compiled:  # every rule calls the blocks (most call nothing else of the network)
        for block in model.blocks:
            block.compile()
    options = {"schedule": schedule} if rule_name in TP_RULES else {}
    rule = create_rule(rule_name, model, seed=0, **options)
    if fused_adam:  # what the trainer would get with torch.optim.Adam(..., fused=True)
        return rule, {group: torch.optim.Adam(params, lr=1e-4, fused=True)
                      for group, params in rule.parameter_groups().items() if params}
    optimizers = {group: make_optimizer(params, AdamConfig(lr=1e-4))  # exactly the trainer's
                  for group, params in rule.parameter_groups().items() if params}
    return rule, optimizers


def train_batches(rule, optimizers, data, phases_per_batch):
    """The trainer's inner loop over ``data``; returns seconds per batch."""
    wrong = 0
    start = time.perf_counter()
    for (x, y), phases in zip(data, phases_per_batch):
        for group in phases:
            optimizers[group].zero_grad(set_to_none=True)
        step = rule.compute_gradients(x, y, phases)
        for group in phases:
            optimizers[group].step()
        step.loss.item()
        wrong += (step.logits.argmax(1) != y).sum().item()
    return (time.perf_counter() - start) / len(data)


def phase_plan(rule, schedule, count):
    passes = rule.passes()  # alternating: half the batches as in the inverse pass, half as in the forward pass
    return [groups for index, groups in enumerate(passes) for _ in range(count // len(passes) + (index < count % len(passes)))]


def bench_model(model_name, batch_size, batches, repeats, warmup, variants, log, fused_adam=False):
    probe = create_model(model_name)
    input_shape, classes = probe.input_shape, probe.num_classes
    del probe
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(batch_size, *input_shape, generator=generator),
             torch.randint(0, classes, (batch_size,), generator=generator)) for _ in range(max(batches, warmup))]
    times = {variant_name(*v): [] for v in variants}
    eval_times = {name: [] for name in times}
    diagnostics_extra = {}
    for repeat in range(repeats):
        for rule_name, schedule, compiled in variants:
            name = variant_name(rule_name, schedule, compiled)
            rule, optimizers = build(model_name, rule_name, schedule, fused_adam, compiled)
            every = getattr(rule.options, "diagnostics_every", 0)
            if every:
                rule.options.diagnostics_every = 0  # timed apart, below
            train_batches(rule, optimizers, data[:warmup], phase_plan(rule, schedule, warmup))
            seconds = train_batches(rule, optimizers, data[:batches], phase_plan(rule, schedule, batches))
            if every and repeat == 0:
                rule.options.diagnostics_every = 1
                count = min(2, batches)
                with_diagnostics = train_batches(rule, optimizers, data[:count], phase_plan(rule, schedule, count))
                diagnostics_extra[name] = max(with_diagnostics - seconds, 0.0) / every
            times[name].append(seconds + diagnostics_extra.get(name, 0.0))
            eval_times[name].append(time_evaluation(rule, min(4 * batch_size, 500), input_shape))
            log(f"  {model_name} repeat {repeat + 1}/{repeats} {name:8s} {1e3 * times[name][-1]:9.1f} ms/batch")
            del rule, optimizers
            gc.collect()
    medians = {name: statistics.median(values) for name, values in times.items()}
    train_examples, eval_examples = EPOCH_EXAMPLES[model_name.split("-")[0]]
    epochs = {name: math.ceil(train_examples / batch_size) * value + statistics.median(eval_times[name]) * eval_examples
              for name, value in medians.items()}
    bp = medians.get("bp")
    return {name: {"ms_per_batch": 1e3 * value, "ratio_to_bp": value / bp if bp else None,
                   "epoch_s": epochs[name], "epoch_ratio_to_bp": epochs[name] / epochs["bp"] if bp else None,
                   "amortised_diagnostics_ms": 1e3 * diagnostics_extra.get(name, 0.0),
                   "all_ms": [1e3 * v for v in times[name]]} for name, value in medians.items()}


@torch.no_grad()
def time_evaluation(rule, batch, input_shape):
    """Seconds per example of the rule's inference as evaluation runs it (``rule.predict``, eval mode)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=generator)
    rule.eval()
    try:
        rule.predict(x)
        start = time.perf_counter()
        rule.predict(x)
        return (time.perf_counter() - start) / batch
    finally:
        rule.train()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist-fc", "mnist-lc", "cifar-lc"])
    parser.add_argument("--rules", nargs="+", default=None,
                        help="variants to time (names as printed, e.g. bp dtp dtp-alt); default: all")
    parser.add_argument("--batches", type=int, default=20, help="timed training batches per variant and repeat")
    parser.add_argument("--large-batches", type=int, default=4,
                        help="timed batches for the CIFAR and ImageNet shapes (slow on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 100 (MNIST), 128 (CIFAR)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fused-adam", action="store_true",
                        help="use torch.optim.Adam(fused=True) instead of the trainer's optimiser")
    parser.add_argument("--compile", action="store_true",
                        help="also time every variant with each block compiled (name+compile)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in VARIANTS if args.rules is None or variant_name(*v) in args.rules]
    if args.rules is not None and not any(v[0] == "bp" for v in variants):
        variants = [("bp", "parallel")] + variants  # ratios need BP
    variants = [(*variant, compiled) for variant in variants for compiled in ((False, True) if args.compile else (False,))]
    if args.compile:  # one compiled graph per block instance: more than dynamo's default 8 per code object
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    started = time.perf_counter()
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "batches": args.batches,
               "repeats": args.repeats, "fused_adam": args.fused_adam, "compile": args.compile, "models": {}}
    for model_name in args.models:
        batch_size = args.batch_size or DEFAULT_BATCH[model_name.split("-")[0]]
        batches = args.batches if model_name.startswith("mnist") else args.large_batches
        log(f"{model_name}: batch {batch_size}, {batches} timed batches x {args.repeats} repeats")
        table = bench_model(model_name, batch_size, batches, args.repeats, args.warmup, variants, log,
                            args.fused_adam)
        results["models"][model_name] = {"batch_size": batch_size, "timed_batches": batches, "variants": table}
    results["seconds"] = time.perf_counter() - started

    print(f"\nTraining time per batch, median of {args.repeats} repeats of a fixed number of timed batches "
          f"(random data, {results['threads']} threads, torch {torch.__version__}"
          f"{', fused Adam' if args.fused_adam else ''}); ratio = rule / BP; TP diagnostics amortised (1 in 20)")
    names = [variant_name(*v) for v in variants]
    print(f"{'model':10s} {'batch':>5s} {'timed':>5s} " + " ".join(f"{n:>15s}" for n in names))
    for model_name, entry in results["models"].items():
        cells = [f"{entry['variants'][n]['ms_per_batch']:7.1f}ms {entry['variants'][n]['ratio_to_bp']:5.2f}x"
                 for n in names]
        print(f"{model_name:10s} {entry['batch_size']:5d} {entry['timed_batches']:5d} "
              + " ".join(f"{c:>15s}" for c in cells))
    print("\nEpoch time estimate (batches per epoch x time per batch + evaluation of validation and test "
          "splits with the rule's predict); ratio = rule / BP")
    print(f"{'model':10s} {'':11s} " + " ".join(f"{n:>15s}" for n in names))
    for model_name, entry in results["models"].items():
        cells = [f"{entry['variants'][n]['epoch_s']:7.1f}s {entry['variants'][n]['epoch_ratio_to_bp']:5.2f}x"
                 for n in names]
        print(f"{model_name:10s} {'':11s} " + " ".join(f"{c:>15s}" for c in cells))
    print(f"total {results['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
