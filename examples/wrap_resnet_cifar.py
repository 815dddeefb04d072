"""The wrapper end to end: a small ResNet (examples/small_resnet.py) trained by several rules on
*generated* data in the CIFAR-10 on-disk format, with alignment to backprop measured per layer.

CIFAR-10 itself cannot be downloaded on the machines this project is developed on, so this
example writes ``cifar-10-batches-py`` pickles whose images are a fixed random template per class
plus noise (a learnable task; NOT CIFAR-10) and trains on them through the ordinary training loop
(``bioprop.train``, the same path as ``bioprop train --model examples/small_resnet.py:small_resnet``).

    python examples/wrap_resnet_cifar.py --out docs/results/wrap --epochs 3

writes ``results.md``, ``alignment.png`` and one compact JSON per rule.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from pathlib import Path

import numpy as np

from bioprop import DataConfig, TrainConfig, train
from bioprop.experiments import plots
from bioprop.training.checkpoint import save_json

MODEL = str(Path(__file__).with_name("small_resnet.py")) + ":small_resnet"
RULES = {"bp": {}, "fa": {}, "usf": {}, "brsf": {}, "frsf": {}, "kp": {}, "wm": {},
         "dfa": {"deliver_at": "stem,stage1"}}


def write_generated_cifar(root: Path, per_batch: int = 1000, n_test: int = 1000, seed: int = 0) -> Path:
    """``root/cifar10/cifar-10-batches-py`` in the real format, holding class templates plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(0, 1, (10, 3072))
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = rng.integers(0, 10, n)
        images = 0.6 * templates[labels] + rng.normal(0, 1, (n, 3072))
        pixels = np.clip(128 + 40 * images, 0, 255).astype(np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": pixels,
                 b"filenames": [f"{name}_{k}.png".encode() for k in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"class{i}".encode() for i in range(10)]},
                                                       protocol=2))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", default=",".join(RULES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, panels = [], []
    with tempfile.TemporaryDirectory() as data_dir:
        write_generated_cifar(Path(data_dir))
        for rule in args.rules.split(","):
            config = TrainConfig(data=DataConfig("cifar10", data_dir=data_dir, val_size=500, verify=False,
                                                 augment=False),
                                 model=MODEL, rule=rule, rule_options=dict(RULES.get(rule, {})), epochs=args.epochs,
                                 batch_size=50, seed=args.seed, device="cpu", alignment_every=10)
            config.optimizers["forward"].lr = 1e-3
            result = train(config, progress=False)
            metrics, summary = result["metrics"], result["summary"]
            save_json({"rule": rule, "config": config.to_dict(), "summary": summary, "metrics": metrics},
                      args.out / f"{rule}.json")
            last = metrics[-1].get("diagnostics", {})
            updates = {k.split("/", 1)[1]: ([r["epoch"] for r in metrics],
                                            [r.get("diagnostics", {}).get(k, float("nan")) for r in metrics])
                       for k in last if k.startswith("update_angle/")}
            feedback = {k.split("/", 1)[1]: ([r["epoch"] for r in metrics],
                                             [r.get("diagnostics", {}).get(k, float("nan")) for r in metrics])
                        for k in last if k.startswith("feedback_angle/")}
            panels.append((rule, updates, feedback))
            angles = "/".join(f"{v:.0f}" for k, v in last.items() if k.startswith("update_angle/"))
            rows.append(f"| {rule} | {summary['test_error_at_best_val']:.2f} | {summary['final_train_error']:.2f} | "
                        f"{angles} |")
    plots.alignment_grid(panels, args.out / "alignment.png", "small ResNet, generated CIFAR-format data")
    lines = ["# A small ResNet wrapped by each rule (generated CIFAR-format data, not CIFAR-10)", "",
             f"Command: `python examples/wrap_resnet_cifar.py --out {args.out} --epochs {args.epochs} "
             f"--seed {args.seed}`; one seed, {args.epochs} epochs, batch 50, Adam lr 1e-3, 5,000 generated "
             "training images (500 held out for validation), 1,000 test images.", "",
             "| rule | test error at best val (%) | train error, last epoch (%) | update angles to BP, last epoch (deg, "
             "per layer in module order) |", "|---|---:|---:|---|", *rows, "", "![alignment](alignment.png)", ""]
    (args.out / "results.md").write_text("\n".join(lines))
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
