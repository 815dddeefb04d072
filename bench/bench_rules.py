"""Training time per batch of every learning rule, relative to backprop, on the same network and batch.

For each network (``mnist-fc``, ``mnist-lc``, ``cifar-lc`` by default) every rule is timed in one
run, interleaved: each repeat builds every variant afresh (same seed), runs a few warm-up batches,
then times a fixed number of training batches (``--batches``, default 20) exactly as the trainer
runs them (zero_grad, ``compute_gradients``, one Adam step per trained group, ``loss.item()``),
on random data of the network's input shape. The median over repeats is reported, with the ratio
to BP. Target-propagation rules run with their default ``diagnostics_every`` (20), so every timed
window includes one diagnostics batch, as a real epoch does. An epoch is this per-batch time
times the number of batches (plus evaluation, which costs the same for every rule).

Variants: bp, fa, dfa, tp, dtp, sdtp, ao-sdtp with the parallel schedule, and dtp with the
alternating schedule (the mean of a batch of an inverse epoch and a batch of a forward epoch).

    python bench/bench_rules.py [--models mnist-fc mnist-lc cifar-lc] [--batches 20] [--repeats 3]
                                [--threads T] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from bioprop.models import create_model
from bioprop.rules import create_rule
from bioprop.training.config import AdamConfig
from bioprop.training.trainer import make_optimizer

DEFAULT_BATCH = {"mnist": 100, "cifar": 128, "imagenet": 16}
VARIANTS = [("bp", "parallel"), ("fa", "parallel"), ("dfa", "parallel"), ("tp", "parallel"),
            ("dtp", "parallel"), ("sdtp", "parallel"), ("ao-sdtp", "parallel"), ("dtp", "alternating")]
TP_RULES = {"tp", "dtp", "sdtp", "ao-sdtp"}


def variant_name(rule, schedule):
    return rule if schedule == "parallel" or rule not in TP_RULES else f"{rule}-{schedule[:3]}"


def build(model_name, rule_name, schedule):
    torch.manual_seed(0)
    model = create_model(model_name)
    options = {"schedule": schedule} if rule_name in TP_RULES else {}
    rule = create_rule(rule_name, model, seed=0, **options)
    optimizers = {group: make_optimizer(params, AdamConfig(lr=1e-4))
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
    if schedule == "alternating":  # half the batches as in an inverse epoch, half as in a forward epoch
        return [rule.phases(0)] * (count // 2) + [rule.phases(1)] * (count - count // 2)
    return [rule.phases(0)] * count


def bench_model(model_name, batch_size, batches, repeats, warmup, variants, log):
    probe = create_model(model_name)
    input_shape, classes = probe.input_shape, probe.num_classes
    del probe
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(batch_size, *input_shape, generator=generator),
             torch.randint(0, classes, (batch_size,), generator=generator)) for _ in range(batches)]
    times = {variant_name(*v): [] for v in variants}
    for repeat in range(repeats):
        for rule_name, schedule in variants:
            rule, optimizers = build(model_name, rule_name, schedule)
            train_batches(rule, optimizers, data[:warmup], phase_plan(rule, schedule, warmup))
            if hasattr(rule, "batches_seen"):
                rule.batches_seen = 0  # exactly one diagnostics batch per timed window
            seconds = train_batches(rule, optimizers, data, phase_plan(rule, schedule, batches))
            times[variant_name(rule_name, schedule)].append(seconds)
            log(f"  {model_name} repeat {repeat + 1}/{repeats} {variant_name(rule_name, schedule):8s} "
                f"{1e3 * seconds:9.1f} ms/batch")
            del rule, optimizers
            gc.collect()
    medians = {name: statistics.median(values) for name, values in times.items()}
    bp = medians.get("bp")
    return {name: {"ms_per_batch": 1e3 * value, "ratio_to_bp": value / bp if bp else None,
                   "all_ms": [1e3 * v for v in times[name]]} for name, value in medians.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist-fc", "mnist-lc", "cifar-lc"])
    parser.add_argument("--rules", nargs="+", default=None,
                        help="variants to time (names as printed, e.g. bp dtp dtp-alt); default: all")
    parser.add_argument("--batches", type=int, default=20, help="timed training batches per variant and repeat")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 100 (MNIST), 128 (CIFAR)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in VARIANTS if args.rules is None or variant_name(*v) in args.rules]
    if args.rules is not None and not any(v[0] == "bp" for v in variants):
        variants = [("bp", "parallel")] + variants  # ratios need BP
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    started = time.perf_counter()
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "batches": args.batches,
               "repeats": args.repeats, "models": {}}
    for model_name in args.models:
        batch_size = args.batch_size or DEFAULT_BATCH[model_name.split("-")[0]]
        log(f"{model_name}: batch {batch_size}, {args.batches} timed batches x {args.repeats} repeats")
        table = bench_model(model_name, batch_size, args.batches, args.repeats, args.warmup, variants, log)
        results["models"][model_name] = {"batch_size": batch_size, "variants": table}
    results["seconds"] = time.perf_counter() - started

    print(f"\nTraining time per batch (median of {args.repeats} repeats of {args.batches} batches, "
          f"random data, {results['threads']} threads, torch {torch.__version__}); ratio = rule / BP")
    names = [variant_name(*v) for v in variants]
    print(f"{'model':10s} {'batch':>5s} " + " ".join(f"{n:>15s}" for n in names))
    for model_name, entry in results["models"].items():
        cells = [f"{entry['variants'][n]['ms_per_batch']:7.1f}ms {entry['variants'][n]['ratio_to_bp']:5.2f}x"
                 for n in names]
        print(f"{model_name:10s} {entry['batch_size']:5d} " + " ".join(f"{c:>15s}" for c in cells))
    print(f"total {results['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
