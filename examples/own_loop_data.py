"""Data for the own-loop examples (``own_loop_*.py``): real MNIST when a copy is on this machine,
else a small synthetic problem of the same shape, as plain ``TensorDataset`` s of float images
``(N, 1, 28, 28)`` and int64 labels, so the loops around them are ordinary PyTorch; and the test
error of a model (a module or a rule) on one.

MNIST is looked for, never downloaded, in ``--data-dir``, ``$BIOPROP_DATA``, the ``shared/data``
folder beside the repository and bioprop's cache (``bioprop data fetch mnist`` fills it). The
synthetic problem: ten classes, each a fixed random coarse pattern blown up to 28 x 28, plus
independent pixel noise (learnable in a few dozen steps; not MNIST).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bioprop.data import DataConfig, cache_dir, load_data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def add_arguments(parser: argparse.ArgumentParser, lr: float = 1e-3) -> None:
    """The options every own-loop example takes."""
    parser.add_argument("--steps", type=int, default=300, help="mini-batches to train on")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=lr, help="Adam learning rate (of the forward weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="a folder holding mnist/ (default: look for one)")
    parser.add_argument("--synthetic", action="store_true", help="the synthetic problem even if MNIST is here")


def find_mnist(data_dir: str | None) -> Path | None:
    """The first folder holding ``mnist/`` among the places above (``data_dir`` only, when given)."""
    roots = [data_dir] if data_dir else [os.environ.get("BIOPROP_DATA"), SHARED, cache_dir()]
    for root in roots:
        if root and (Path(root) / "mnist").is_dir():
            return Path(root)
    return None


def mnist(root: Path) -> tuple[TensorDataset, TensorDataset]:
    """MNIST's 60,000 training and 10,000 test images, standardised with the training set's statistics."""
    bundle = load_data(DataConfig("mnist", data_dir=str(root), val_size=0))

    def tensors(split):
        x = (split.images().float() / 255 - split.mean[0]) / split.std[0]
        return TensorDataset(x, split.labels())

    return tensors(bundle.train), tensors(bundle.test)


def synthetic(n_train: int = 4000, n_test: int = 1000, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 7, 7, generator=generator).repeat_interleave(4, 2).repeat_interleave(4, 3)

    def draw(n):
        y = torch.randint(0, 10, (n,), generator=generator)
        x = 0.5 * templates[y] + torch.randn(n, 1, 28, 28, generator=generator)
        return TensorDataset(x, y)

    return draw(n_train), draw(n_test)


def load(data_dir: str | None = None, force_synthetic: bool = False) -> tuple[TensorDataset, TensorDataset, str]:
    """``(train, test, description)``: MNIST if found (and not ``force_synthetic``), else synthetic."""
    root = None if force_synthetic else find_mnist(data_dir)
    if data_dir and root is None and not force_synthetic:
        raise SystemExit(f"no mnist/ folder in --data-dir {data_dir}")
    if root is None:
        why = "as asked" if force_synthetic else "MNIST not found on this machine"
        return (*synthetic(), f"a synthetic 10-class problem ({why})")
    return (*mnist(root), f"MNIST from {root}")


@torch.no_grad()
def test_error(model: nn.Module, data: TensorDataset) -> float:
    """Top-1 error (%) of ``model`` (any module, or a rule: ``rule(x)`` is the network's output)."""
    model.eval()
    wrong = sum((model(x).argmax(1) != y).sum().item() for x, y in DataLoader(data, batch_size=1000))
    model.train()
    return 100.0 * wrong / len(data)
