"""Data-parallel step time: the bucketed, overlapped gradient reducer against the flat all-reduce.

Two gloo processes on the CPU (``torch.multiprocessing``), each a rule's full training step on its
share of a batch: zero the gradients, ``compute_gradients``, average them over the processes, one
Adam step per group. Variants, timed interleaved (every repeat times every variant):

* ``none``: no averaging at all (the compute alone, a floor);
* ``flat``: ``DataParallel.average_gradients`` per group after the whole backward pass, one flat
  ``torch.cat`` + all-reduce + copy back (the implementation before issue 17 §5);
* ``bucketed``: ``GradientReducer`` (buckets of 25 MB after a first one of 1 MB, DDP's sizes, sent
  asynchronously as the backward pass accumulates them, waited on before the step), what the
  trainer uses now;
* ``bucketed-1MB``: the same with 1 MB buckets (more overlap on these small models).

    python bench/bench_allreduce.py [--cases mnist-fc:dtp,mnist-lc:bp] [--batch 100] [--steps 10]
                                    [--repeats 5] [--threads 1] [--json out.json]

Prints the seconds per step of each variant (rank 0's clock, the processes lined up by a barrier
before each block of steps): the fastest block, which other processes on the machine disturb
least, and the median block; the ratios to ``flat``: the median over repeats of the ratio of the
blocks timed side by side in one repeat (robust to a load that drifts), and of the fastest
blocks; and ``communication``, a variant's time above ``none`` (fastest blocks). The load
average is printed before and after: on a busy machine the ratios mean more than the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bioprop.models import create_model
from bioprop.rules import create_rule
from bioprop.training import AdamConfig
from bioprop.training.distributed import GradientReducer, from_environment
from bioprop.training.trainer import make_optimizer

VARIANTS = ("none", "flat", "bucketed", "bucketed-1MB")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(model_name: str, rule_name: str, rank: int, world: int):
    torch.manual_seed(0)
    options = {"diagnostics_every": 0} if rule_name in ("dtp", "sdtp", "tp", "ao-sdtp") else {}
    rule = create_rule(rule_name, create_model(model_name), seed=0, **options)
    rule.set_data_parallel(rank, world)
    groups = {group: params for group, params in rule.parameter_groups().items() if params}
    optimizers = {group: make_optimizer(params, AdamConfig(lr=1e-4), "auto", torch.device("cpu"))
                  for group, params in groups.items()}
    return rule, groups, optimizers


def worker(rank, world, port, args, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    parallel, _ = from_environment(torch.device("cpu"))
    try:
        for case in args.cases.split(","):
            model_name, rule_name = case.split(":")
            rule, groups, optimizers = build(model_name, rule_name, rank, world)
            reducers = {"bucketed": GradientReducer(parallel, groups),
                        "bucketed-1MB": GradientReducer(parallel, groups, bucket_bytes=2**20)}
            shape = create_model(model_name).input_shape
            generator = torch.Generator().manual_seed(rank)
            x = torch.randn(args.batch // world, *shape, generator=generator)
            y = torch.randint(0, 10, (args.batch // world,), generator=generator)
            passes = rule.passes()

            def step(variant, index):
                pass_groups = passes[index % len(passes)]
                for group in pass_groups:
                    optimizers[group].zero_grad(set_to_none=True)
                reducer = reducers.get(variant)
                if reducer is not None:
                    reducer.start(pass_groups)
                rule.compute_gradients(x, y, pass_groups)
                if reducer is not None:
                    reducer.finish()
                for group in pass_groups:
                    if variant == "flat":
                        parallel.average_gradients(groups[group])
                    optimizers[group].step()

            times = {variant: [] for variant in VARIANTS}
            for variant in VARIANTS:  # warm-up; the reducers learn their gradient counts
                for index in range(2 * len(passes)):
                    step(variant, index)
            for _ in range(args.repeats):
                for variant in VARIANTS:
                    dist.barrier()
                    started = time.perf_counter()
                    for index in range(args.steps):
                        step(variant, index)
                    times[variant].append((time.perf_counter() - started) / args.steps)
            if rank == 0:
                count = sum(p.numel() for params in groups.values() for p in params)
                results[case] = {"parameters": count, "gradient_mb": 4 * count / 2**20,
                                 "early_buckets": {name: r.early_launches for name, r in reducers.items()},
                                 "seconds": {variant: min(values) for variant, values in times.items()},
                                 "median_seconds": {variant: statistics.median(values)
                                                    for variant, values in times.items()},
                                 "paired_ratio": {variant: statistics.median([a / b for a, b in
                                                                              zip(values, times["flat"])])
                                                  for variant, values in times.items()}}
            for reducer in reducers.values():
                reducer.close()
    finally:
        dist.barrier()
        dist.destroy_process_group()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="mnist-fc:dtp,mnist-lc:bp", help="model:rule,... (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=100, help="global batch (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per variant (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default: %(default)s)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = mp.Manager().dict()
    load_before = os.getloadavg()[0]
    mp.spawn(worker, args=(2, free_port(), args, results), nprocs=2, join=True)
    results = dict(results)
    print(f"torch {torch.__version__}, 2 gloo processes x {args.threads} thread(s), global batch {args.batch}, "
          f"{args.repeats} blocks of {args.steps} steps per variant; seconds per step, fastest block (median block)")
    print(f"{'case':<14} {'grads MB':>8} " + " ".join(f"{v:>20}" for v in VARIANTS)
          + "   vs flat, paired (fastest): bucketed, 1MB   communication: flat, bucketed, 1MB")
    for case, result in results.items():
        seconds, median = result["seconds"], result["median_seconds"]
        floor = seconds["none"]
        print(f"{case:<14} {result['gradient_mb']:8.1f} "
              + " ".join(f"{seconds[v]:9.4f} ({median[v]:.4f})" for v in VARIANTS)
              + "   " + ", ".join(f"{result['paired_ratio'][v]:.2f}x ({seconds[v] / seconds['flat']:.2f}x)"
                              for v in ("bucketed", "bucketed-1MB"))
              + f"   {seconds['flat'] - floor:.4f}, {seconds['bucketed'] - floor:.4f}, "
              f"{seconds['bucketed-1MB'] - floor:.4f}")
    print(f"ratios below 1.00x: the bucketed step is faster; buckets sent early (all steps): "
          + ", ".join(f"{case} {result['early_buckets']}" for case, result in results.items()))
    load = os.getloadavg()[0]
    print(f"load average {load_before:.2f} before, {load:.2f} after, on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results, "load": load}, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
