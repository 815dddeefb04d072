"""Throughput of the ImageNet folder pipeline: decoded + transformed images per second.

Generates ILSVRC-layout folders (``train/<wnid>/*.JPEG``) of photo-like JPEGs (smooth colour
fields, fine texture, edges and noise; quality 90, ~110 KB at 500x375 like ImageNet's average
file) in a temporary directory, then times whole epochs of ``FolderSplit.uint8_batches`` (read,
decode, transform, collate; no normalisation, which happens on the GPU in training) for

* the train transform (RandomResizedCrop 224 + flip) and the eval transform (Resize 256 +
  CenterCrop 224),
* every decoder installed (Pillow; simplejpeg / PyTurboJPEG from the ``fast-jpeg`` extra),
  each with full-size decoding and with ``draft="all"`` (JPEG DCT scaling where the crop
  allows it),
* ``num_workers`` 0 (decoding in the main process), 1 and 2,

interleaved (each repeat times every configuration once; the table shows medians), after one
warm-up epoch per configuration that also starts the persistent workers. Ratios are between
configurations of this one run. It also reports how far draft decoding moves pixel values and
whether each fast decoder gives Pillow's pixels. Besides images per second (wall time) the
table shows images per CPU second of the process and its workers, which stays comparable when
other processes share the cores.

    python bench/bench_imagenet.py                      # ~3 minutes on 2 cores
    python bench/bench_imagenet.py --sizes 500x375 --images 400 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bioprop.data.imagenet import FolderSplit, available_decoders, load_image

BICUBIC = getattr(Image, "Resampling", Image).BICUBIC
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ---------------------------------------------------------------- test images

def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: colour fields at four scales, ring edges and sensor noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width, 3), np.float32)
    for cell, amplitude in [(160, 60), (40, 35), (8, 22), (2, 30)]:
        coarse = rng.normal(0, 1, (height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        out += amplitude * np.stack([np.asarray(Image.fromarray(coarse[..., k]).resize(
            (width, height), BICUBIC)) for k in range(3)], -1)
    img = Image.fromarray(np.clip(out + 128, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(25):
        x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(5, width // 6)
        draw.ellipse((x - r, y - r, x + r, y + r), width=int(rng.integers(1, 6)),
                     outline=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(img, np.float32) + rng.normal(0, 6, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_folder(root: Path, size: tuple[int, int], count: int, classes: int = 10,
                 quality: int = 90) -> list[tuple[str, int]]:
    """``root/train/<wnid>/<wnid>_<i>.JPEG``; returns (path, label) items."""
    items = []
    for i in range(count):
        label = i % classes
        wnid = f"n{label:08d}"
        path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(*size, seed=i)).save(path, "JPEG", quality=quality)
        items.append((str(path), label))
    return items


# ---------------------------------------------------------------- CPU accounting

def own_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and its live children (workers)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # fields[1] = ppid; 11, 12 = utime, stime
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy_seconds() -> float | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- measurements

def epoch_rate(split: FolderSplit, augment: bool, batch: int, epoch: int) -> tuple[float, float]:
    """(images per second of wall time, images per CPU second of this process and its
    workers) for one epoch of uint8 batches. The second does not drop when other processes
    share the cores, so it compares configurations fairly on a busy machine."""
    cpu, start, seen = own_cpu_seconds(), time.perf_counter(), 0
    for _, y in split.uint8_batches(batch, shuffle=True, seed=0, epoch=epoch, augment=augment):
        seen += len(y)
    wall, cpu = time.perf_counter() - start, own_cpu_seconds() - cpu
    return seen / wall, seen / max(cpu, 1e-9)


def pixel_effects(items, decoders: list[str], seeds: int = 2) -> dict:
    """How draft decoding and the fast decoders change the images, per transform."""
    out = {}
    for train in (False, True):
        name = "train" if train else "eval"
        diffs, drafted = [], 0
        unequal = {d: 0 for d in decoders if d != "pillow"}
        for path, _ in items:
            for seed in range(seeds if train else 1):
                full = load_image(path, train, seed, "horizontal")
                draft = load_image(path, train, seed, "horizontal", draft=True)
                diff = (full.int() - draft.int()).abs()
                drafted += bool(diff.any())
                diffs.append(diff)
                for d in unequal:
                    unequal[d] += not torch.equal(full, load_image(path, train, seed, "horizontal",
                                                                   decoder=d))
        changed = [d for d in diffs if d.any()]
        out[name] = {
            "images": len(diffs), "drafted": drafted,
            "mean_abs_diff_drafted": float(torch.stack(changed).float().mean()) if changed else 0.0,
            "max_abs_diff": int(max(int(d.max()) for d in diffs)),
            "fast_decoder_images_unequal": unequal}
    return out


def run(args) -> dict:
    decoders = [d for d in available_decoders() if d in args.decoders]
    variants = [(d, draft) for d in decoders for draft in ("off", "all")]
    results = {"torch": torch.__version__, "cpus": os.cpu_count(), "decoders": decoders,
               "batch": args.batch, "repeats": args.repeats, "sizes": {}}
    busy0, own0, wall0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.split("x"))
            count = args.images if size[0] * size[1] <= 500 * 375 else max(args.images // 2, 32)
            items = write_folder(Path(tmp) / size_text, size, count)
            kb = sum(os.path.getsize(p) for p, _ in items) / len(items) / 1000
            print(f"{size_text}: {count} images, {kb:.0f} KB on average", file=sys.stderr)
            splits = {(d, draft, w): FolderSplit(items, MEAN, STD, num_workers=w, decoder=d,
                                                 draft=draft)
                      for d, draft in variants for w in args.workers}
            samples = {(t, *key): [] for t in ("train", "eval") for key in splits}
            for repeat in range(args.repeats + 1):  # repeat 0 warms up (and starts workers)
                for transform in ("train", "eval"):
                    for key, split in splits.items():
                        rate = epoch_rate(split, transform == "train", args.batch, repeat)
                        if repeat:
                            samples[(transform, *key)].append(rate)
            for split in splits.values():
                split.close()
            results["sizes"][size_text] = {
                "images": count, "mean_kb": kb,
                "rates": {"/".join(map(str, k)): statistics.median(r for r, _ in v)
                          for k, v in samples.items()},
                "cpu_rates": {"/".join(map(str, k)): statistics.median(c for _, c in v)
                              for k, v in samples.items()},
                "pixels": pixel_effects(items[: args.pixel_images], decoders)}
    if busy0 is not None:
        wall = time.perf_counter() - wall0
        other = max(machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0), 0.0)
        results["other_processes_cpu_share"] = other / (wall * os.cpu_count())
        results["seconds"] = wall
    return results


# ---------------------------------------------------------------- report

def table(results: dict, workers: list[int]) -> str:
    lines = ["| images | transform | decoder | draft | workers | img/s | img/s per process "
             "| img per CPU-s | vs Pillow full decode | vs 1 worker |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for size, entry in results["sizes"].items():
        rates, cpu_rates = entry["rates"], entry["cpu_rates"]
        for transform in ("train", "eval"):
            for d in results["decoders"]:
                for draft in ("off", "all"):
                    for w in workers:
                        key = f"{transform}/{d}/{draft}/{w}"
                        rate, per_cpu = rates[key], cpu_rates[key]
                        base = rates[f"{transform}/pillow/off/{w}"]
                        one = rates.get(f"{transform}/{d}/{draft}/1")
                        lines.append(
                            f"| {size} | {transform} | {d} | {'yes' if draft == 'all' else 'no'} "
                            f"| {w} | {rate:.0f} | {rate / max(w, 1):.0f} | {per_cpu:.0f} "
                            f"| {rate / base:.2f}x "
                            f"| {f'{rate / one:.2f}x' if one and w != 1 else '-'} |")
    return "\n".join(lines)


def pixel_notes(results: dict) -> str:
    lines = []
    for size, entry in results["sizes"].items():
        for transform, p in entry["pixels"].items():
            fast = ", ".join(f"{d}: {n} of {p['images']} differ from Pillow"
                             for d, n in p["fast_decoder_images_unequal"].items()) or "no fast decoder"
            lines.append(f"{size} {transform}: draft decoded {p['drafted']} of {p['images']} "
                         f"images smaller (mean |diff| {p['mean_abs_diff_drafted']:.2f}, max "
                         f"{p['max_abs_diff']} levels of 255 on those); {fast}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["500x375", "1000x750"])
    parser.add_argument("--images", type=int, default=200, help="per folder (half for big sizes)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decoders", nargs="+", default=["pillow", "simplejpeg", "turbojpeg"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pixel-images", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = run(args)
    print(f"torch {results['torch']}, {results['cpus']} CPUs, decoders {results['decoders']}, "
          f"batch {args.batch}, median of {args.repeats} epochs, {results.get('seconds', 0):.0f} s")
    if "other_processes_cpu_share" in results:
        print(f"other processes used {100 * results['other_processes_cpu_share']:.0f}% of the "
              "machine's CPU time during the run")
    print()
    print(table(results, args.workers))
    print()
    print(pixel_notes(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
