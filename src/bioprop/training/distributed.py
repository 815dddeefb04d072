"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

Every process holds the whole learning state (model, feedback weights, inverses, optimiser
moments) and sees ``batch_size / world_size`` examples of each global mini-batch: rank ``r``
takes rows ``r, r + world_size, ...`` of the epoch's permutation (``Split.batches``). After a
rule's ``compute_gradients`` the gradients of the groups being trained are averaged across
processes in one flat all-reduce per group, then every process takes the same optimiser step,
so the processes stay identical without broadcasting weights. Because every local loss is a
batch mean (or, for DTP's first target, per example), the average of the processes' gradients
is the gradient of the global batch: two processes at batch B/2 equal one at batch B (tested).

Fixed random weights (feedback, auxiliary features) are drawn from seeded generators, so they
agree on every rank; the global RNG is seeded alike on every rank and consumed alike (target
propagation draws the noise of the whole global batch and keeps its own rows). Only rank 0
writes files. ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the backend is
NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bioprop.training.device import resolve_device


@dataclass
class DataParallel:
    """Where this process stands in a data-parallel job (``world_size == 1``: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replace every ``.grad`` by its mean over the processes (one flat all-reduce)."""
        if not self.enabled:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.world_size)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over the processes (a float64 vector of counters)."""
        if self.enabled:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value):
        """``value`` from rank 0 on every process (any picklable object)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        return box[0]


def from_environment(device: torch.device) -> tuple[DataParallel, torch.device]:
    """Joins the ``torchrun`` job described by the environment, if any; returns the context and
    this process's device (``cuda:LOCAL_RANK`` on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DataParallel(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # gloo for CPU tensors (counters, objects) also on CUDA jobs
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return DataParallel(rank=rank, world_size=world_size, local_rank=local_rank, device=device), device


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job, or a single process (read from the environment, so it holds
    before and after the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def join(device_name: str = "auto") -> DataParallel:
    """Joins the ``torchrun`` job of the environment, if any (the experiment drivers call this
    before deciding what to run, so that every process decides the same)."""
    return from_environment(resolve_device(device_name))[0]
