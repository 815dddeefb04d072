"""GPU measurements for the scale issue, all taken in one run (``bench/gpu_check.sh`` calls it).

1. ``imagenet``: ImageNet-LC training steps on generated inputs for BP, FA, DFA, DTP and SDTP in
   fp32 and bf16: images per second, peak memory (``torch.cuda.max_memory_allocated``) and the
   planner's estimate beside it (``bioprop plan``).
2. ``lc``: the LC layer against ``Conv2d`` and the naive unfold+einsum LC on the ImageNet-LC layer
   shapes (forward + backward), as ratios.
3. ``overhead``: per-step host overhead on a small model (MNIST-FC, BP, batch 100): plain Adam
   against foreach and fused Adam, and a CUDA-graph-captured step (``torch.cuda.graphs``).

    python bench/bench_gpu.py --out DIR [--sections imagenet,lc,overhead] [--batch 64] [--steps 10]

On a machine without CUDA, ``--device cpu --tiny`` runs every section on tiny shapes (a dry run
of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lc import NaiveLC, PaddedConv  # noqa: E402

from bioprop.experiments.plan import plan  # noqa: E402
from bioprop.models import create_model  # noqa: E402
from bioprop.nn import LocallyConnected2d, same_padding  # noqa: E402
from bioprop.rules import create_rule  # noqa: E402
from bioprop.training import AdamConfig, precision  # noqa: E402
from bioprop.training.trainer import make_optimizer  # noqa: E402

RULES = ["bp", "fa", "dfa", "dtp", "sdtp"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device, steps: int, warmup: int = 2) -> float:
    """Median seconds per call of ``step`` over ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(steps):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def training_step(rule, optimizers, x, y, mode: str, device):
    groups = tuple(optimizers)

    def step():
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=False)
        with precision.autocast(mode, device):
            rule.compute_gradients(x, y, groups)
        for optimizer in optimizers.values():
            optimizer.step()
    return step


def bench_imagenet(model_name, batch, steps, device) -> list[dict]:
    rows = []
    for rule_name in RULES:
        for mode in ("fp32", "bf16"):
            torch.manual_seed(0)
            baseline = 0
            if device.type == "cuda":
                gc.collect()  # the previous row's rule: feedback rules hold reference cycles (site <-> rule)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                baseline = torch.cuda.memory_allocated(device)  # whatever survived, not this row's
            rule = create_rule(rule_name, create_model(model_name)).to(device)
            optimizers = {g: make_optimizer(p, AdamConfig(lr=1e-4), "auto", device)
                          for g, p in rule.parameter_groups().items()}
            x = torch.randn(batch, *rule.model.input_shape, device=device)
            y = torch.randint(0, rule.model.num_classes, (batch,), device=device)
            seconds = timed(training_step(rule, optimizers, x, y, mode, device), device, steps)
            peak = torch.cuda.max_memory_allocated(device) - baseline if device.type == "cuda" else None
            estimate = plan(model_name, rule_name, batch, precision=mode)
            rows.append({"model": model_name, "rule": rule_name, "precision": mode, "batch": batch,
                         "images_per_second": batch / seconds, "seconds_per_step": seconds,
                         "peak_bytes": peak, "planned_peak_bytes": estimate.peak_bytes})
            print(json.dumps(rows[-1]), flush=True)
            del rule, optimizers
    return rows


def bench_lc(model_name, batch, steps, device) -> list[dict]:
    """Forward + backward of every LC layer of ``model_name``: ours, naive, Conv2d."""
    rows = []
    for layer in create_model(model_name).layers:
        if not isinstance(layer, LocallyConnected2d):
            continue
        c, o, (h, w) = layer.in_channels, layer.out_channels, layer.in_size
        ours = LocallyConnected2d(c, o, (h, w), layer.kernel_size, layer.stride, padding="same").to(device)
        variants = {"ours": ours, "naive": NaiveLC(ours).to(device),
                    "conv": PaddedConv(c, o, layer.kernel_size, layer.stride,
                                       same_padding((h, w), layer.kernel_size, layer.stride)).to(device)}
        x = torch.randn(batch, c, h, w, device=device, requires_grad=True)
        times = {}
        for name, module in variants.items():
            def step(module=module):
                out = module(x)
                out.backward(torch.ones_like(out))
            try:
                times[name] = timed(step, device, steps)
            except torch.OutOfMemoryError:
                times[name] = None
        row = {"layer": f"{c}x{h}x{w} -> k{layer.kernel_size} s{layer.stride} {o}", "batch": batch,
               **{f"{k}_ms": (v * 1e3 if v else None) for k, v in times.items()}}
        if times.get("naive") and times.get("conv"):
            row.update(naive_over_ours=times["naive"] / times["ours"], ours_over_conv=times["ours"] / times["conv"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_overhead(steps, device) -> list[dict]:
    """Host overhead of a small model's step: Adam kernels, and a CUDA graph of the whole step."""
    rows = []
    x = torch.randn(100, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (100,), device=device)
    for implementation in ("plain", "foreach", "fused"):
        torch.manual_seed(0)
        rule = create_rule("bp", create_model("mnist-fc")).to(device)
        optimizers = {"forward": make_optimizer(list(rule.parameters()), AdamConfig(), implementation, device)}
        seconds = timed(training_step(rule, optimizers, x, y, "fp32", device), device, steps * 10)
        rows.append({"variant": f"eager, {implementation} Adam", "ms_per_step": seconds * 1e3})
        print(json.dumps(rows[-1]), flush=True)
    if device.type == "cuda":
        torch.manual_seed(0)
        rule = create_rule("bp", create_model("mnist-fc")).to(device)
        optimizer = torch.optim.Adam(rule.parameters(), lr=1e-3, capturable=True, foreach=True)
        step = training_step(rule, {"forward": optimizer}, x, y, "fp32", device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        seconds = timed(graph.replay, device, steps * 10)
        rows.append({"variant": "CUDA graph of the whole step (capturable Adam)", "ms_per_step": seconds * 1e3})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--sections", default="imagenet,lc,overhead")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="MNIST-LC shapes, 2 steps: a dry run")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = "mnist-lc" if args.tiny else "imagenet-lc"
    steps = 2 if args.tiny else args.steps
    batch = 8 if args.tiny else args.batch
    results = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
               else "cpu", "dry_run": args.tiny}
    # true fp32 everywhere unless a row says otherwise: cuDNN's default would let Conv2d use TF32 while
    # the LC layer's batched matmuls ran in fp32 (PyTorch's matmul default), an unfair comparison
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    results["tf32"] = {"matmul": False, "cudnn": False}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = {"imagenet": lambda: bench_imagenet(model, batch, steps, device),
                "lc": lambda: bench_lc(model, batch, steps, device),
                "overhead": lambda: bench_overhead(steps, device)}
    for name in args.sections.split(","):
        results[name] = sections[name]()
        # after every section: a time limit that stops the script keeps what was measured
        (out / "bench_gpu.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
