"""Why are SDTP and AO-SDTP unstable with the alternating schedule on MNIST-FC? (issue 8 §4)

Trains a preset and variants of it for a few epochs on real MNIST, recording the target
propagation diagnostics *within* every pass (every ``--every`` batches: the clean reconstruction
error of each inverse and the angle between each target shift and the negative backprop
gradient), and writes one JSON file per variant plus a Markdown summary. Example::

    python examples/sdtp_alternating_study.py --preset mnist-fc-sdtp-alternating --epochs 12 \
        --data-dir ../shared/data --out docs/results/sdtp-alternating

Variants (``--variants``, comma-separated; each changes one thing of the preset):
``preset``; ``inverse-lr/10``; ``forward-lr/3``; ``inverse-beta1-0.99``; ``parallel`` (the same
settings, inverses trained on every batch: no stale inverses); ``option:NAME=VALUE`` (a rule
option, e.g. ``option:noise=0.3``). The diagnostics are collected by a callback (:class:`DiagnosticsTrace`), the way
to watch anything per step without editing the training loop.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bioprop.presets import get_preset
from bioprop.training import Callback, StepEvent, Trainer


def variant_config(preset: str, variant: str, epochs: int, seed: int, data_dir: str | None):
    config = get_preset(preset).config(seed=seed)
    config.epochs = epochs
    config.device = "cpu"
    if data_dir:
        config.data.data_dir = data_dir
    if variant == "inverse-lr/10":
        config.optimizers["inverse"].lr /= 10
    elif variant == "forward-lr/3":
        config.optimizers["forward"].lr /= 3
    elif variant == "inverse-beta1-0.99":
        config.optimizers["inverse"].beta1 = 0.99
    elif variant == "parallel":
        config.rule_options["schedule"] = "parallel"
    elif variant.startswith("option:"):  # option:name=value, a rule option
        name, _, value = variant[len("option:"):].partition("=")
        try:
            config.rule_options[name] = json.loads(value)
        except json.JSONDecodeError:
            config.rule_options[name] = value
    elif variant != "preset":
        raise SystemExit(f"unknown variant {variant!r}")
    return config


class DiagnosticsTrace(Callback):
    """Keeps the rule's diagnostics of every step that has them (every ``diagnostics_every`` batches)."""

    def __init__(self):
        self.trace: list[dict] = []

    def on_step_end(self, trainer, step: StepEvent) -> None:
        if step.result.diagnostics:
            self.trace.append({"epoch": step.epoch, "groups": list(step.groups), "batch": step.step - 1,
                               **{name: float(value) for name, value in step.result.diagnostics.items()}})


def run(preset: str, variant: str, epochs: int, seed: int, every: int, data_dir: str | None) -> dict:
    config = variant_config(preset, variant, epochs, seed, data_dir)
    config.rule_options["diagnostics_every"] = every
    diagnostics = DiagnosticsTrace()
    trainer = Trainer(config, progress="none", log=lambda *a: None, callbacks=[diagnostics])
    trace = diagnostics.trace
    started = time.perf_counter()
    metrics = trainer.fit()
    return {"preset": preset, "variant": variant, "seed": seed, "epochs": epochs,
            "config": config.to_dict(), "seconds": time.perf_counter() - started,
            "metrics": [{k: row.get(k) for k in ("epoch", "train_error", "val_error", "test_error")}
                        for row in metrics],
            "trace": trace}


def summary_line(result: dict) -> str:
    errors = [row["test_error"] for row in result["metrics"]]
    forward = [t for t in result["trace"] if t["groups"] == ["forward"] or len(t["groups"]) == 2]
    penultimate = max(int(k.split("layer")[1]) for k in forward[0] if k.startswith("target_angle"))
    last = [t for t in forward if t["epoch"] == result["epochs"]] or forward
    recon = [v for t in last for k, v in t.items() if k.startswith("reconstruction_error")]
    angle = [t[f"target_angle/layer{penultimate}"] for t in last]
    return (f"| {result['variant']} | {min(errors):.2f} (ep {errors.index(min(errors)) + 1}) | {errors[-1]:.2f} | "
            f"{sum(recon) / len(recon):.3f} | {sum(angle) / len(angle):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-fc-sdtp-alternating")
    parser.add_argument("--variants", default="preset,parallel,inverse-lr/10,forward-lr/3")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=25, help="diagnose every N batches")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        result = run(args.preset, variant, args.epochs, args.seed, args.every, args.data_dir)
        name = f"{args.preset}.{variant.replace('/', '-').replace(':', '-').replace('=', '-')}.seed{args.seed}.json"
        (out / name).write_text(json.dumps(result) + "\n")
        print(summary_line(result), flush=True)


if __name__ == "__main__":
    main()
