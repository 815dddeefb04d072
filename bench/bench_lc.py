"""Benchmark of bioprop's LocallyConnected2d against a naive LC layer, Conv2d and a plain matmul.

Forward + backward (input, weight and bias gradients) on the LC layer shapes of Bartunov et al.
(2018), CIFAR-LC and MNIST-LC, SAME padding.  All variants are timed in one run, interleaved
(each repeat times every variant of every layer once), after a warm-up; the median is reported.

    python bench/bench_lc.py [--batch 128] [--repeats 7] [--json out.json] [--threads T] [--thp]
"""

import argparse
import json
import os
import statistics
import sys
import time

if "--thp" in sys.argv:    # read by PyTorch's CPU allocator once, so it must be set before import
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bioprop.nn import LocallyConnected2d, same_padding  # noqa: E402

# name, (C, H, W), kernel, out channels, stride
CIFAR_LAYERS = [("cifar1", (3, 32, 32), 5, 64, 2), ("cifar2", (64, 16, 16), 5, 128, 2),
                ("cifar3", (128, 8, 8), 3, 256, 1)]
MNIST_LAYERS = [("mnist1", (1, 28, 28), 3, 32, 2), ("mnist2", (32, 14, 14), 3, 64, 2)]


class NaiveLC(nn.Module):
    """The usual PyTorch LC layer: F.unfold + einsum, autograd does the backward."""

    def __init__(self, lc):
        super().__init__()
        out_h, out_w, o, c, kh, kw = lc.weight.shape
        self.weight = nn.Parameter(lc.weight.detach().reshape(out_h * out_w, o, c * kh * kw))
        self.bias = nn.Parameter(lc.bias.detach().clone())
        self.kernel_size, self.stride, self.padding = lc.kernel_size, lc.stride, lc.padding

    def forward(self, x):
        top, bottom, left, right = self.padding
        patches = F.unfold(F.pad(x, (left, right, top, bottom)), self.kernel_size,
                           stride=self.stride)                                # (N, K, L)
        out = torch.einsum("nkl,lok->nol", patches, self.weight)
        return out.reshape(x.shape[0], *self.bias.shape) + self.bias


class PaddedConv(nn.Module):
    """nn.Conv2d with the same shapes: explicit F.pad for SAME, then padding 0."""

    def __init__(self, c, o, kernel, stride, padding):
        super().__init__()
        self.conv = nn.Conv2d(c, o, kernel, stride=stride, padding=0)
        top, bottom, left, right = padding
        self.pad = (left, right, top, bottom)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


def make_step(module, x):
    """One forward + backward with a fixed random output grad in the output's own layout."""
    with torch.no_grad():
        grad = torch.randn_like(module(x))    # randn_like keeps the output's memory layout

    def step():
        x.grad = None
        for p in module.parameters():
            p.grad = None
        module(x).backward(grad)
    return step


def cpu_times():
    """(busy CPU seconds of the whole machine, of this process, wall time), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    busy = sum(fields) - fields[3] - fields[4]          # all but idle and iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()


def other_processes_cpu_share(before):
    """Fraction of all cores' time that other processes used since ``before``."""
    after = cpu_times()
    if before is None or after is None:
        return None
    machine, own, wall = (a - b for a, b in zip(after, before))
    return max(machine - own, 0.0) / (wall * os.cpu_count())


def time_once(step, iters):
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def make_input(batch, shape, batch_innermost, requires_grad):
    """Random input (N, C, H, W); batch_innermost: the layout our LC layers output."""
    c, h, w = shape
    x = torch.randn(h, w, c, batch).permute(3, 2, 0, 1) if batch_innermost \
        else torch.randn(batch, c, h, w)
    return x.requires_grad_(requires_grad)


def build_steps(batch, mode):
    """{layer: {"flops": ..., "steps": {variant: step}}} for one input mode.

    mode "network": every variant gets its input in the layout that the previous layer of its
    own kind produces (batch-innermost for ours, contiguous NCHW for naive and conv), and the
    first layer's input is data (no input grad, so 2 instead of 3 matmuls' worth of FLOPs).
    mode "contiguous": every variant gets a contiguous NCHW input and computes the input grad.
    """
    layers = {}
    for index, (name, (c, h, w), k, o, s) in enumerate(CIFAR_LAYERS + MNIST_LAYERS):
        first = index in (0, len(CIFAR_LAYERS))
        needs_grad = mode == "contiguous" or not first
        ours_innermost = mode == "network" and not first
        lc = LocallyConnected2d(c, o, (h, w), k, s, padding="same")
        x_ours = make_input(batch, (c, h, w), ours_innermost, needs_grad)
        x_torch = make_input(batch, (c, h, w), False, needs_grad)
        out_h, out_w = lc.out_size
        products = 3 if needs_grad else 2       # forward, weight grad (and input grad)
        layers[name] = {"flops": products * 2 * batch * out_h * out_w * c * k * k * o, "steps": {
            "ours": make_step(lc, x_ours), "naive": make_step(NaiveLC(lc), x_torch),
            "conv": make_step(PaddedConv(c, o, k, s, same_padding((h, w), k, s)), x_torch)}}
    return layers


def report(title, layers, samples, matmul_gflops):
    print(f"\n{title}")
    print(f"{'layer':<8} {'ours ms':>8} {'naive ms':>9} {'conv ms':>8} {'naive/ours':>11} "
          f"{'ours/conv':>10} {'ours GFLOP/s':>13} {'% of matmul':>12}")

    def row(name, ms, flops):
        gflops = flops / (ms["ours"] / 1e3) / 1e9
        print(f"{name:<8} {ms['ours']:8.2f} {ms['naive']:9.2f} {ms['conv']:8.2f} "
              f"{ms['naive'] / ms['ours']:10.2f}x {ms['ours'] / ms['conv']:9.2f}x "
              f"{gflops:13.1f} {100 * gflops / matmul_gflops:11.1f}%")
        return {**ms, "flops": flops, "speedup_vs_naive": ms["naive"] / ms["ours"],
                "ours_over_conv": ms["ours"] / ms["conv"], "ours_gflops": gflops,
                "fraction_of_matmul": gflops / matmul_gflops}

    results, total = {}, {"ours": 0.0, "naive": 0.0, "conv": 0.0}
    for name, layer in layers.items():
        ms = {v: 1e3 * statistics.median(samples[name, v]) for v in layer["steps"]}
        results[name] = row(name, ms, layer["flops"])
        if name.startswith("cifar"):
            for v in ms:
                total[v] += ms[v]
        if name == CIFAR_LAYERS[-1][0]:
            flops = sum(results[layer_name]["flops"] for layer_name, *_ in CIFAR_LAYERS)
            results["cifar_total"] = row("cifar", total, flops)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: torch's default for this machine)")
    parser.add_argument("--json", help="write the numbers to this file")
    parser.add_argument("--thp", action="store_true",
                        help="THP_MEM_ALLOC_ENABLE=1: transparent huge pages for large CPU tensors "
                             "(avoids page-faulting big fresh buffers such as LC weight grads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu_before = cpu_times()

    modes = {mode: build_steps(args.batch, mode) for mode in ("network", "contiguous")}
    a, b = torch.randn(256, 1152), torch.randn(1152, 8192)
    matmul_flops = 2 * 256 * 1152 * 8192

    # Warm-up, and inner iterations so that each sample takes at least ~40 ms.
    iters = {}
    for mode, layers in modes.items():
        for name, layer in layers.items():
            for variant, step in layer["steps"].items():
                time_once(step, 1)
                iters[mode, name, variant] = max(1, round(0.04 / time_once(step, 1)))
    time_once(lambda: torch.mm(a, b), 3)

    samples = {key: [] for key in iters}
    matmul_samples = []
    for _ in range(args.repeats):
        matmul_samples.append(time_once(lambda: torch.mm(a, b), 5))
        for (mode, name, variant), n in iters.items():
            samples[mode, name, variant].append(time_once(modes[mode][name]["steps"][variant], n))
    matmul_gflops = matmul_flops / statistics.median(matmul_samples) / 1e9

    others = other_processes_cpu_share(cpu_before)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.repeats} repeats (median), forward+backward, fp32, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    if others is not None:
        print(f"other processes used {100 * others:.0f}% of the machine's CPU time during the run"
              f"{' -- numbers are unreliable' if others > 0.05 else ''}")
    print(f"plain matmul (torch.mm 256x1152 @ 1152x8192): {matmul_gflops:.1f} GFLOP/s")
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(),
               "batch": args.batch, "repeats": args.repeats, "thp": args.thp,
               "other_processes_cpu_share": others, "matmul_gflops": matmul_gflops}
    titles = {"network": "inputs/grads in each layer's own output layout (as inside a network)",
              "contiguous": "contiguous NCHW inputs, input grad computed for every layer"}
    for mode, layers in modes.items():
        mode_samples = {(name, v): samples[mode, name, v] for (m, name, v) in samples if m == mode}
        results[mode] = report(titles[mode], layers, mode_samples, matmul_gflops)
    print("\ntargets: naive/ours >= 2x (stretch 3x), ours/conv <= 3x (stretch 2.5x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
