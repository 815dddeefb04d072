"""CPU figures of the scale work, as ratios measured in one run, interleaved, median of repeats.

1. ``loop``: a BP epoch (slice) on MNIST-FC through ``bioprop``'s trainer against a plain PyTorch
   loop (same model, data on the same device, same Adam), with plain and with fused Adam.
2. ``precision``: one training step of each rule, bf16 autocast against fp32, on MNIST-FC and
   MNIST-LC.
3. ``parallel``: two gloo processes at batch B/2 each against one process at batch B (the
   data-parallel overhead on one machine; on 2 shared cores this measures communication cost,
   not a speed-up).
4. ``jobs``: ``bioprop reproduce`` of four MNIST-FC cells (one epoch each) with ``--jobs 2`` (two runs in flight, one
   thread each) against ``--jobs 1`` (one at a time): the aggregate throughput of sharing the
   machine, the CPU counterpart of the GPU script's runs in flight together.

    python bench/bench_scale.py [--sections loop,precision,parallel,jobs] [--repeats 5] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bioprop.data import DataConfig, load_data
from bioprop.models import create_model
from bioprop.rules import RULES, create_rule
from bioprop.training import AdamConfig, TrainConfig, Trainer, precision
from bioprop.training.trainer import make_optimizer


def median_time(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_loop(data_dir, repeats, batches=200):
    data = load_data(DataConfig("mnist", data_dir=data_dir), seed=0)
    x_all, y_all = next(data.train.batches(100 * batches, shuffle=True, seed=0))
    results = {}

    def plain(implementation):
        def run():
            torch.manual_seed(0)
            model = create_model("mnist-fc")
            optimizer = make_optimizer(list(model.parameters()), AdamConfig(lr=1.52e-4), implementation,
                                       torch.device("cpu"))
            for x, y in zip(x_all.split(100), y_all.split(100)):
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
        return run

    def trainer(implementation):
        config = TrainConfig(data=DataConfig("mnist", data_dir=data_dir), model="mnist-fc", rule="bp", epochs=1,
                             limit_batches=batches, limit_eval_batches=1, train_eval_size=100, device="cpu",
                             optimizer_impl=implementation,
                             optimizers={"forward": AdamConfig(lr=1.52e-4), "inverse": AdamConfig()})

        def run():
            Trainer(config, progress=False, data=data, log=lambda *a: None).fit()
        return run

    variants = {f"{kind}, {impl} Adam": (plain if kind == "plain loop" else trainer)(impl)
                for kind in ("plain loop", "bioprop trainer") for impl in ("plain", "fused")}
    samples = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved
        for name, run in variants.items():
            samples[name].append(median_time(run, 1))
    for name, values in samples.items():
        results[name] = statistics.median(values)
    print("\n| variant | s per 200 batches | ratio to the plain loop with the same Adam |\n|---|---:|---:|")
    for name, seconds in results.items():
        impl = name.split(", ")[1]
        print(f"| {name} | {seconds:.3f} | {seconds / results[f'plain loop, {impl}']:.2f}x |")
    print(f"| fused / plain Adam, trainer | | {results['bioprop trainer, fused Adam'] / results['bioprop trainer, plain Adam']:.2f}x |")


def bench_precision(repeats):
    print("\n| model | rule | fp32 ms/step | bf16 ms/step | bf16 / fp32 |\n|---|---|---:|---:|---:|")
    for model_name in ("mnist-fc", "mnist-lc"):
        for rule_name in RULES.names():
            times = {}
            for mode in ("fp32", "bf16"):
                torch.manual_seed(0)
                rule = create_rule(rule_name, create_model(model_name))
                x, y = torch.randn(100, *rule.model.input_shape), torch.randint(0, 10, (100,))
                groups = tuple(rule.parameter_groups())

                def step():
                    with precision.autocast(mode, torch.device("cpu")):
                        rule.compute_gradients(x, y, groups)
                step()
                times[mode] = median_time(step, repeats)
            print(f"| {model_name} | {rule_name} | {1e3 * times['fp32']:.1f} | {1e3 * times['bf16']:.1f} | "
                  f"{times['bf16'] / times['fp32']:.2f}x |")


def interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median wall times of two whole commands, timed alternately (a busy neighbour hits both)."""
    times = ([], [])
    for _ in range(repeats):
        for samples, command in zip(times, (first, second)):
            samples.append(median_time(command, 1))
    return statistics.median(times[0]), statistics.median(times[1])


def bench_parallel(data_dir, repeats):
    def run(processes):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
                   f"--master-port={port}", "-m", "bioprop", "train", "--data", "mnist", "--model", "mnist-fc",
                   "--rule", "dtp", "--epochs", "1", "--limit-batches", "100", "--limit-eval-batches", "1",
                   "--train-eval-size", "100", "--device", "cpu", "--no-progress"] + (
                       ["--data-dir", data_dir] if data_dir else [])
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(command, env=env, check=True, capture_output=True)
    one, two = interleaved_medians(lambda: run(1), lambda: run(2), repeats)
    print(f"\ntorchrun, DTP on MNIST-FC, 100 global batches of 100 (whole command incl. start-up): "
          f"1 process {one:.1f} s, 2 processes {two:.1f} s, ratio {two / one:.2f}x")


def bench_jobs(data_dir, repeats, cells=("mnist-fc-bp", "mnist-fc-fa", "mnist-fc-dfa", "mnist-fc-dtp-parallel")):
    def run(jobs):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "bioprop", "reproduce", *cells, "--seeds", "1", "--epochs", "1",
                       "--jobs", str(jobs), "--threads", "1", "--device", "cpu",
                       "--out", out, "--no-report", "--no-progress"] + (["--data-dir", data_dir] if data_dir else [])
            subprocess.run(command, check=True, capture_output=True)
    one, two = interleaved_medians(lambda: run(1), lambda: run(2), repeats)
    print(f"\nreproduce, {len(cells)} cells x 1 epoch (whole command): --jobs 1 {one:.1f} s, --jobs 2 {two:.1f} s; "
          f"aggregate throughput {one / two:.2f}x that of one run at a time")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="loop,precision,parallel,jobs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    sections = args.sections.split(",")
    if "loop" in sections:
        bench_loop(args.data_dir, args.repeats)
    if "precision" in sections:
        bench_precision(args.repeats)
    if "parallel" in sections:
        bench_parallel(args.data_dir, max(1, args.repeats // 2))
    if "jobs" in sections:
        bench_jobs(args.data_dir, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
