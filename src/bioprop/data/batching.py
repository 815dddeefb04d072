"""The :class:`Split` interface and :class:`TensorSplit`, the in-memory split.

Every batch order and every augmentation is drawn from :class:`torch.Generator` objects seeded
from ``(seed, epoch[, rank])``, never from the global RNG, so a run resumed at an epoch
boundary sees exactly the batches it would have seen. For data-parallel training each epoch's
permutation is padded (by wrapping around) to a multiple of ``world_size`` (or cut to one with
``drop_last``) and rank ``r`` takes positions ``r, r + world_size, ...``: the shards are
disjoint, together cover the split, and every rank gets the same number of batches.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from bioprop.errors import BiopropError

FLIPS = ("horizontal", "vertical", "none")


def make_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from a stable hash of ``key`` (e.g. ``(seed, epoch, "order")``)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _check(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise BiopropError(f"batch_size={batch_size}; expected a positive integer")
    if world_size < 1 or not 0 <= rank < world_size:
        raise BiopropError(f"rank={rank}, world_size={world_size}; expected 0 <= rank < world_size")


def shard_size(n: int, world_size: int, drop_last: bool) -> int:
    return n // world_size if drop_last else math.ceil(n / world_size)


def epoch_indices(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, drop_last: bool = False) -> torch.Tensor:
    """This rank's example indices for one epoch, in visiting order."""
    order = (torch.randperm(n, generator=make_generator(seed, epoch, "order"))
             if shuffle else torch.arange(n))
    per_rank = shard_size(n, world_size, drop_last)
    total = per_rank * world_size
    if total > n:  # pad by wrapping around, as DistributedSampler does
        order = order.repeat(math.ceil(total / n))
    return order[:total][rank::world_size]


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int,
                  flip: str) -> torch.Tensor:
    """Random crop with ``padding`` zero pixels on each side, then a random flip with
    probability 1/2 (``flip`` "horizontal" mirrors left-right, "vertical" up-down, "none" off).

    Vectorised over the batch as one gather; ``x`` is a (B, C, H, W) tensor of any dtype (uint8
    here, so the zero padding is black pixels before normalisation)."""
    b, c, h, w = x.shape
    if padding == 0 and flip == "none":
        return x
    offsets = (torch.randint(0, 2 * padding + 1, (b, 2), generator=generator) if padding > 0
               else torch.zeros(b, 2, dtype=torch.long))
    rows = torch.arange(h).expand(b, h)
    cols = torch.arange(w).expand(b, w)
    if flip != "none":
        mirror = (torch.rand(b, generator=generator) < 0.5)[:, None]
        if flip == "horizontal":
            cols = torch.where(mirror, w - 1 - cols, cols)
        else:
            rows = torch.where(mirror, h - 1 - rows, rows)
    width = w + 2 * padding
    # out[n, :, i, j] = padded[n, :, oy + rows[n, i], ox + cols[n, j]]
    index = ((offsets[:, :1] + rows) * width)[:, :, None] + (offsets[:, 1:] + cols)[:, None, :]
    index = index.view(b, 1, h * w).to(x.device).expand(b, c, h * w)
    padded = F.pad(x, (padding,) * 4) if padding > 0 else x
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


class Split:
    """One data split. Subclasses implement ``__len__`` and ``_batches``.

    ``batches`` yields ``(x, y)``: x float32 (B, C, H, W) normalised with this split's
    ``mean``/``std``, on ``device``; y int64 (B,). ``augment`` is off by default: the trainer
    passes ``augment=bundle.augment`` for training epochs only.
    """

    mean: list[float]
    std: list[float]

    def __len__(self) -> int:
        raise NotImplementedError

    def num_batches(self, batch_size: int, drop_last: bool = False, world_size: int = 1) -> int:
        _check(batch_size, 0, world_size)
        per_rank = shard_size(len(self), world_size, drop_last)
        return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                augment: bool = False, device="cpu", drop_last: bool = False, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _check(batch_size, rank, world_size)
        order = epoch_indices(len(self), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                              world_size=world_size, drop_last=drop_last)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        chunks = [order[i:i + batch_size] for i in range(0, stop, batch_size)]
        generator = make_generator(seed, epoch, "augment", rank)
        device = torch.device(device)
        c = len(self.mean)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        scale, shift = 1.0 / (255.0 * std), -mean / std  # (u8 / 255 - mean) / std
        for x, y in self._batches(chunks, augment, generator, device):
            yield torch.addcmul(shift, x.to(device, non_blocking=True).float(), scale), y.to(device)

    def _batches(self, chunks: list[torch.Tensor], augment: bool, generator: torch.Generator,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield uint8 (B, C, H, W) images and labels for each chunk of indices."""
        raise NotImplementedError


class TensorSplit(Split):
    """A split held in memory: uint8 images (N, C, H, W) and int64 labels, optionally a view
    through ``indices`` (so a validation split costs no copy of the images)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std,
                 indices: torch.Tensor | None = None, crop_padding: int = 4,
                 flip: str = "horizontal"):
        if x.dtype != torch.uint8 or x.dim() != 4 or len(x) != len(y):
            raise BiopropError(f"images must be uint8 (N, C, H, W) with N labels; got {x.dtype} "
                               f"{tuple(x.shape)} and {len(y)} labels")
        self.x, self.y, self.indices = x, y, indices
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.crop_padding, self.flip = crop_padding, flip

    def __len__(self) -> int:
        return len(self.x) if self.indices is None else len(self.indices)

    def to(self, device) -> "TensorSplit":
        """The same split with its storage on ``device`` (e.g. the whole uint8 set on a GPU)."""
        idx = None if self.indices is None else self.indices.to(device)
        return TensorSplit(self.x.to(device), self.y.to(device), self.mean, self.std, idx,
                           self.crop_padding, self.flip)

    def images(self) -> torch.Tensor:
        """All uint8 images of this split (a copy when it is a view)."""
        return self.x if self.indices is None else self.x[self.indices]

    def labels(self) -> torch.Tensor:
        return self.y if self.indices is None else self.y[self.indices]

    def _batches(self, chunks, augment, generator, device):
        for chunk in chunks:
            chunk = chunk.to(self.x.device)
            rows = chunk if self.indices is None else self.indices[chunk]
            x = self.x[rows].to(device, non_blocking=True)
            if augment:
                x = augment_batch(x, generator, self.crop_padding, self.flip)
            yield x, self.y[rows]
