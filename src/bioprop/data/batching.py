"""The :class:`Split` interface and :class:`TensorSplit`, the in-memory split.

Every batch order and every augmentation is drawn from :class:`torch.Generator` objects seeded
from stable keys, never from the global RNG:

* the epoch's example order from ``(seed, epoch, "order")``;
* the augmentation of global batch ``i`` from ``(seed, epoch, "augment", 0, i)``, one fresh
  generator per batch (:meth:`PlannedBatch.augment_generator`; the ``0`` held the rank once, and
  stays so that a single process draws what it always drew). The draws are made for the whole
  global batch, ``world_size`` times this rank's rows, and rank ``r`` keeps rows
  ``r, r + world_size, ...`` of them (:meth:`PlannedBatch.mine`), which are the positions its
  examples have in the global batch. So an example's augmentation depends only on
  ``(seed, epoch, pass)`` and its place in the global batch, never on the rank: two processes at
  batch B/2 see exactly the augmented examples that one process at batch B sees.

So a batch depends only on its key, not on the batches before it: a run resumed at an epoch
boundary, or in the middle of an epoch with ``batches(..., start=i)``, sees exactly the batches
it would have seen, and skipped batches are never loaded, decoded or augmented.

For data-parallel training each epoch's permutation is padded (by wrapping around) to a multiple
of ``world_size`` (or cut to one with ``drop_last``) and rank ``r`` takes positions
``r, r + world_size, ...``: the shards are disjoint, together cover the split, and every rank
gets the same number of batches.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator, NamedTuple

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


class PlannedBatch(NamedTuple):
    """One batch of one rank's epoch, before anything is loaded: this rank's share of global batch
    ``index`` (row ``k`` is example ``k * world_size + rank`` of the global batch)."""

    index: int  # position of the batch in the epoch, 0-based (the same on every rank)
    rows: torch.Tensor  # int64 positions in the split of its examples, in order
    augment_key: tuple  # (seed, epoch, "augment", 0, index): the global batch's, not the rank's
    rank: int = 0
    world_size: int = 1

    def augment_generator(self) -> torch.Generator:
        """The generator that all random augmentation of the global batch draws from."""
        return make_generator(*self.augment_key)

    @property
    def global_size(self) -> int:
        """Examples in the global batch (every rank's share of a batch has the same size)."""
        return len(self.rows) * self.world_size

    def mine(self, draws: torch.Tensor) -> torch.Tensor:
        """This rank's rows of per-example ``draws`` made for the whole global batch."""
        return draws[self.rank::self.world_size]


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device``; to CUDA through pinned memory, so the host does not wait."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int,
                  flip: str, batch: PlannedBatch | None = None) -> torch.Tensor:
    """Random crop with ``padding`` zero pixels on each side, then a random flip with
    probability 1/2 (``flip`` "horizontal" mirrors left-right, "vertical" up-down, "none" off).

    Vectorised over the batch as one gather; ``x`` is a (B, C, H, W) tensor of any dtype (uint8
    here, so the zero padding is black pixels before normalisation). ``batch``: the planned batch
    ``x`` is a rank's share of; the draws are made for the whole global batch and this rank keeps
    its rows (:meth:`PlannedBatch.mine`), so the result does not depend on the rank."""
    b, c, h, w = x.shape
    if padding == 0 and flip == "none":
        return x
    size, mine = (batch.global_size, batch.mine) if batch is not None else (b, lambda draws: draws)
    # the draws come from a CPU generator (the same on every device); only they cross to the device,
    # from pinned memory without waiting, and the gather index is built there
    offsets = to_device_async(mine(torch.randint(0, 2 * padding + 1, (size, 2), generator=generator)) if padding > 0
                              else torch.zeros(b, 2, dtype=torch.long), x.device)
    rows = torch.arange(h, device=x.device).expand(b, h)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip != "none":
        mirror = to_device_async(mine(torch.rand(size, generator=generator) < 0.5)[:, None], x.device)
        if flip == "horizontal":
            cols = torch.where(mirror, w - 1 - cols, cols)
        else:
            rows = torch.where(mirror, h - 1 - rows, rows)
    width = w + 2 * padding
    # out[n, :, i, j] = padded[n, :, oy + rows[n, i], ox + cols[n, j]]
    index = ((offsets[:, :1] + rows) * width)[:, :, None] + (offsets[:, 1:] + cols)[:, None, :]
    index = index.view(b, 1, h * w).expand(b, c, h * w)
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
        """How many batches ``batches`` yields per rank (``start`` not counted)."""
        _check(batch_size, 0, world_size)
        per_rank = shard_size(len(self), world_size, drop_last)
        return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)

    def plan(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
             drop_last: bool = False, rank: int = 0, world_size: int = 1,
             start: int = 0) -> list[PlannedBatch]:
        """The batches of one rank's epoch from batch ``start`` on: which examples, which key.

        ``start`` may be 0 .. ``num_batches(...)`` (that many batches are skipped; the last
        value leaves none); anything else is a :class:`BiopropError`."""
        _check(batch_size, rank, world_size)
        order = epoch_indices(len(self), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                              world_size=world_size, drop_last=drop_last)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        count = math.ceil(stop / batch_size)
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= count:
            raise BiopropError(f"start={start!r}; expected a batch index in 0..{count} (this "
                               f"epoch has {count} batches of {batch_size} on each rank)")
        return [PlannedBatch(i, order[i * batch_size:min((i + 1) * batch_size, stop)],
                             (seed, epoch, "augment", 0, i), rank, world_size)
                for i in range(start, count)]

    def uint8_batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                      augment: bool = False, device="cpu", drop_last: bool = False,
                      rank: int = 0, world_size: int = 1,
                      start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """As :meth:`batches`, but the images stay uint8 (B, C, H, W), not normalised, and
        may still be on the CPU (pinned, for a CUDA ``device``, where the split can)."""
        plan = self.plan(batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                         drop_last=drop_last, rank=rank, world_size=world_size, start=start)
        return self._batches(plan, augment, torch.device(device))

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                augment: bool = False, device="cpu", drop_last: bool = False, rank: int = 0,
                world_size: int = 1, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of one epoch, from batch index ``start`` on.

        ``list(batches(..., start=k))`` equals ``list(batches(...))[k:]`` exactly (same
        examples, same augmentation, bit for bit), for any ``k`` in 0..``num_batches(...)``,
        and the ``k`` skipped batches are not loaded, decoded or augmented."""
        device = torch.device(device)
        raw = self.uint8_batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                                 augment=augment, device=device, drop_last=drop_last, rank=rank,
                                 world_size=world_size, start=start)
        c = len(self.mean)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        scale, shift = 1.0 / (255.0 * std), -mean / std  # (u8 / 255 - mean) / std
        for x, y in raw:
            x = x.to(device, non_blocking=True)
            yield torch.addcmul(shift, x.float(), scale), y.to(device, non_blocking=True)

    def _batches(self, plan: list[PlannedBatch], augment: bool,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield uint8 (B, C, H, W) images and int64 labels for each planned batch, in order,
        every random augmentation of a batch drawn from ``batch.augment_generator()``."""
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

    def to(self, device, moved: dict | None = None) -> "TensorSplit":
        """The same split with its storage on ``device`` (e.g. the whole uint8 set on a GPU).
        ``moved`` (tensor id -> copy on ``device``), shared between calls, copies the images and
        labels that several splits view (train and validation) only once."""
        moved = {} if moved is None else moved

        def copy(tensor):
            if id(tensor) not in moved:
                moved[id(tensor)] = (tensor, tensor.to(device))  # the original kept: its id stays unique
            return moved[id(tensor)][1]
        idx = None if self.indices is None else self.indices.to(device)
        return TensorSplit(copy(self.x), copy(self.y), self.mean, self.std, idx, self.crop_padding, self.flip)

    def images(self) -> torch.Tensor:
        """All uint8 images of this split (a copy when it is a view)."""
        return self.x if self.indices is None else self.x[self.indices]

    def labels(self) -> torch.Tensor:
        return self.y if self.indices is None else self.y[self.indices]

    def _batches(self, plan, augment, device):
        # the epoch's order goes to the images' device in one copy, not one (synchronising) copy per batch
        order = torch.cat([batch.rows for batch in plan]).to(self.x.device) if plan else None
        start = 0
        for batch in plan:
            positions = order[start:start + len(batch.rows)]
            start += len(batch.rows)
            rows = positions if self.indices is None else self.indices[positions]
            x = self.x[rows].to(device, non_blocking=True)
            if augment:
                x = augment_batch(x, batch.augment_generator(), self.crop_padding, self.flip, batch)
            yield x, self.y[rows]
