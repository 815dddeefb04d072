"""The main job: train MNIST-FC with backprop, feedback alignment and direct feedback alignment
on real MNIST, then print test errors beside Bartunov et al. (2018), Table 1.

    python examples/demo.py --epochs 3 [--out runs/demo]

Each run is an ordinary bioprop run folder (config.json, metrics.jsonl, results.json,
checkpoint.pt); rerunning continues finished runs instead of repeating them.
"""

import argparse
from pathlib import Path

import bioprop
from bioprop.data import DataConfig
from bioprop.training.checkpoint import load_torch
from bioprop.training.results import summarize

PAPER_TEST_ERROR = {"bp": 1.48, "fa": 1.85, "dfa": 2.75}  # MNIST-FC, best over 500 epochs
# Table 5 (MNIST-FC column): forward Adam lr, beta1, beta2, eps.
PAPER_ADAM = {"bp": (1.52e-4, 0.9, 0.999, 1e-8), "fa": (1.68e-4, 0.9, 0.999, 1e-4), "dfa": (1.649e-3, 0.9, 0.95, 1e-3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args()
    rows = []
    for rule, (lr, beta1, beta2, eps) in PAPER_ADAM.items():
        config = bioprop.TrainConfig(data=DataConfig("mnist"), model="mnist-fc", rule=rule, epochs=args.epochs,
                                     batch_size=100, seed=0)
        config.optimizers["forward"] = bioprop.AdamConfig(lr=lr, beta1=beta1, beta2=beta2, eps=eps)
        out = Path(args.out) / rule
        done = (out / "checkpoint.pt").exists() and load_torch(out / "checkpoint.pt")["epoch"] >= args.epochs
        print(f"== {rule}: mnist-fc, {args.epochs} epochs, Adam lr {lr:g} ==")
        metrics = (load_torch(out / "checkpoint.pt")["metrics"] if done else
                   bioprop.train(config, out=out, resume=(out / "checkpoint.pt").exists())["metrics"])
        rows.append((rule, summarize(metrics[: args.epochs])))
    print(f"\nMNIST-FC after {args.epochs} epochs (paper: best of 500 epochs)\n")
    print("| rule | train error % | test error % at best val | best test error % | paper test error % |")
    print("|---|---|---|---|---|")
    for rule, summary in rows:
        print(f"| {rule} | {summary['train_error_at_best_val']:.2f} | {summary['test_error_at_best_val']:.2f} | "
              f"{summary['best_test_error']:.2f} | {PAPER_TEST_ERROR[rule]:.2f} |")


if __name__ == "__main__":
    main()
