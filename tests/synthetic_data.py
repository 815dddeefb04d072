"""In-memory datasets of random pixels in a real dataset's shape, for tests of the training loop
that must run without the genuine data (a fresh machine): never reported as results."""

from __future__ import annotations

import torch

from bioprop.data import DataBundle, TensorSplit, dataset_info


def in_memory(dataset: str = "mnist", n_train: int = 200, n_val: int = 0, n_test: int = 100,
              seed: int = 0) -> DataBundle:
    """Random uint8 images and labels shaped like ``dataset`` (train, optional validation, test);
    labels are a fixed function of the pixels, so there is something to learn."""
    info = dataset_info(dataset)
    generator = torch.Generator().manual_seed(seed)
    mean, std = list(info.mean), list(info.std)

    def split(n):
        images = torch.randint(0, 256, (n, *info.input_shape), generator=generator, dtype=torch.uint8)
        labels = images.flatten(1)[:, : info.num_classes].float().argmax(1)
        return TensorSplit(images, labels, mean, std)

    return DataBundle(info, split(n_train), split(n_val) if n_val else None, split(n_test),
                      {"mean": mean, "std": std}, False, [str(k) for k in range(info.num_classes)])
