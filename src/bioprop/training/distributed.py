"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

Every process holds the whole learning state (model, feedback weights, inverses, optimiser
moments) and sees ``batch_size / world_size`` examples of each global mini-batch: rank ``r``
takes rows ``r, r + world_size, ...`` of the epoch's permutation (``Split.batches``), and the
augmentation of each example depends on its place in the global batch, not on the rank
(:mod:`bioprop.data.batching`). What keeps the processes one model, as DDP does:

* **At the start** rank 0's parameters and buffers are broadcast (:meth:`DataParallel.broadcast_state`),
  so even a user's module initialised without a seed starts identical everywhere.
* **Gradients** are averaged by :class:`GradientReducer`, DDP's reducer for any rule: the
  parameters of a pass's groups are laid out once in buckets (reverse registration order; 25 MB,
  the first one 1 MB so that it goes soon, as DDP's). Each bucket is all-reduced asynchronously
  (``async_op=True``) as soon as the gradients of all its parameters have been accumulated
  (``Tensor.register_post_accumulate_grad_hook``; how often each is accumulated per step is
  learned in the first step, which sends everything at the end), so communication overlaps the
  rest of the backward pass; buckets go in a fixed order, and all are waited on before the
  optimiser step. No device value is read on the host (no per-step synchronisation). A gradient
  a rule assigns to ``.grad`` instead of accumulating it fires no hook: its bucket goes at the end
  of ``compute_gradients``. A gradient that is ``None`` on some ranks only counts as zeros there
  (every rank reduces the same fixed bucket layout, so nothing hangs); it stays ``None`` where it
  is ``None`` on every rank, as a single process would leave it (one presence flag per parameter
  travels in the bucket; it is read, a host read, only on a step where a gradient is ``None`` on
  this rank).
* **Buffers** (batch-norm statistics, counters) are broadcast from rank 0 whenever a step has
  changed them and they are about to be used outside training: before every evaluation and every
  checkpoint (:meth:`DataParallel.broadcast_buffers`). Between those points only rank 0's
  statistics evolve as DDP's (``broadcast_buffers=True``) would; the other ranks' running
  statistics are replaced, so evaluation scores one model on every shard and rank 0 saves what
  every rank holds.

Because every local loss is a batch mean (or, for DTP's first target, per example), the average
of the processes' gradients is the gradient of the global batch: two processes at batch B/2 equal
one at batch B (tested, to float rounding, for every rule and schedule, with augmentation on
CIFAR-format data). Batch normalisation is the exception: in training mode each process
normalises with the statistics of its own B/2 examples, so the forward pass itself differs from
one process at B. ``--sync-batchnorm`` (:mod:`bioprop.training.sync_batchnorm`) computes them over
the global batch and restores the equality; with it the reducer sends its buckets at the end of
the backward pass rather than between the batch-norm layers' own collectives, so that the
collectives run in the same order on every rank whatever gradients each rank has.

Fixed random weights (feedback, auxiliary features) are drawn from seeded generators, so they
agree on every rank; the global RNG is seeded alike on every rank and consumed alike (target
propagation draws the noise of the whole global batch and keeps its own rows). Only rank 0
writes files. ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the backend is
NCCL on CUDA and gloo on the CPU (gloo also carries CPU tensors of CUDA jobs).
"""

from __future__ import annotations

import gc
import os
from collections import defaultdict
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
        """Replace every ``.grad`` by its mean over the processes (one flat all-reduce after the whole
        backward pass). The simple reference that :class:`GradientReducer` is tested and measured
        against (``bench/bench_allreduce.py``); it needs the same gradients ``None`` on every rank."""
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

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every process (as DDP does when it wraps a module)."""
        self._broadcast([*module.parameters(), *module.buffers()])

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics, counters, fixed feedback) on every process."""
        self._broadcast(list(module.buffers()))

    def _broadcast(self, tensors: list[torch.Tensor]) -> None:
        """One broadcast from rank 0 per dtype and device (each tensor once), copied back in place."""
        if not self.enabled:
            return
        kinds: dict[tuple, dict[int, torch.Tensor]] = defaultdict(dict)
        for tensor in tensors:
            kinds[(tensor.dtype, tensor.device)][id(tensor)] = tensor
        with torch.no_grad():
            for kind in kinds.values():
                flat = torch.cat([t.detach().reshape(-1) for t in kind.values()])
                dist.broadcast(flat, src=0)
                offset = 0
                for tensor in kind.values():
                    tensor.copy_(flat[offset: offset + tensor.numel()].view_as(tensor))
                    offset += tensor.numel()

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


def leave_process_group(together: bool = False) -> None:
    """Leaves the ``torchrun`` job, if any, cleanly (a process exiting with gloo's threads still
    running aborts with "terminate called without an active exception"). What finished runs left for
    the garbage collector is freed first, while the group and the interpreter are whole: objects
    freed during the interpreter's shutdown made a rank abort there now and then. ``together``: a
    command that finished on every rank waits for the others, then all leave."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if together:
            try:
                dist.barrier()
            except RuntimeError:  # another rank is gone already
                pass
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job, or a single process (read from the environment, so it holds
    before and after the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def join(device_name: str = "auto") -> DataParallel:
    """Joins the ``torchrun`` job of the environment, if any (the experiment drivers call this
    before deciding what to run, so that every process decides the same)."""
    return from_environment(resolve_device(device_name))[0]


#: the size of a gradient bucket, and of the first one (sent soonest), as DDP's defaults
#: (``bucket_cap_mb=25``, ``torch.distributed._DEFAULT_FIRST_BUCKET_BYTES``)
BUCKET_BYTES = 25 * 2**20
FIRST_BUCKET_BYTES = 2**20


class GradientReducer:
    """Averages the gradients of a data-parallel job over its processes in buckets that are sent
    while the backward pass still runs (see the module docstring). One per trainer::

        reducer = GradientReducer(parallel, {"forward": [...], "inverse": [...]})
        reducer.start(groups)            # before compute_gradients
        rule.compute_gradients(x, y, groups)
        reducer.finish()                 # every .grad of groups is now the mean over the processes
        optimizer.step()

    Each tuple of groups gets its own bucket layout (:class:`_Layout`), built on first use. A bucket
    is sent early only once the number of times each of its gradients is accumulated per step is
    known (the first step of a layout sends everything at the end and learns the counts; a
    parameter that never fires its hook keeps its bucket to the end) and only with ``overlap``.
    A gradient changed outside autograd after it was accumulated (``p.grad.mul_(...)``, or assigned)
    is seen at the end of the step; from then on that layout sends its buckets at the end of the
    step, and if the changed gradient had already been sent the step raises ``RuntimeError``
    (a rule must then accumulate its gradients through autograd, or assign them only).
    """

    def __init__(self, parallel: DataParallel, groups: dict[str, list[torch.nn.Parameter]],
                 bucket_bytes: int = BUCKET_BYTES, overlap: bool = True):
        self.parallel, self.groups, self.overlap = parallel, groups, overlap
        self.bucket_bytes = (min(FIRST_BUCKET_BYTES, bucket_bytes), bucket_bytes)
        self.layouts: dict[tuple[str, ...], _Layout] = {}
        self.active: _Layout | None = None
        self.early_launches = 0  # buckets sent before the end of compute_gradients (benchmarks, tests)
        self._handles = []
        self.attach()

    def attach(self) -> None:
        """Hooks every parameter (done on construction; again after :meth:`close`)."""
        if not self._handles:
            unique = {id(p): p for params in self.groups.values() for p in params}
            self._handles = [p.register_post_accumulate_grad_hook(self._accumulated) for p in unique.values()]

    def start(self, groups: tuple[str, ...]) -> None:
        """A step of ``groups`` begins: gradients accumulated from now until :meth:`finish` are reduced."""
        key = tuple(groups)
        if key not in self.layouts:
            params = list({id(p): p for group in key for p in self.groups.get(group, [])}.values())
            self.layouts[key] = _Layout(params, self.bucket_bytes, self.parallel.world_size)
        self.active = self.layouts[key]
        self.active.begin(self.overlap)

    def finish(self) -> None:
        """Sends what is left, waits for every bucket and writes the averages into ``.grad``."""
        layout, self.active = self.active, None
        if layout is not None:
            self.early_launches += layout.finish()

    def close(self) -> None:
        """Removes the hooks (the parameters no longer report to this reducer). The hooks live in the
        parameters' C++ autograd state, where Python's garbage collector cannot see that they keep this
        reducer (its buckets, their buffers) alive: without ``close`` a finished trainer's reducer
        and parameters would stay in memory until the interpreter exits."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _accumulated(self, param: torch.Tensor) -> None:
        if self.active is not None:
            self.active.accumulated(param)


class _Bucket:
    """Consecutive parameters of one dtype and device, their gradients in one flat buffer followed
    by one presence flag per parameter (1: this rank has a gradient), all-reduced as one tensor."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        sizes = [p.numel() for p in params]
        self.numel = sum(sizes)
        self.buffer = torch.zeros(self.numel + len(params), dtype=params[0].dtype, device=params[0].device)
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        self.views = [self.buffer[o: o + p.numel()].view_as(p) for o, p in zip(offsets, params)]
        self.presence = self.buffer[self.numel:]
        self.work = None
        self.sent: list[tuple] = []  # the gradient (object, version) of each parameter when sent

    def launch(self) -> None:
        with torch.no_grad():
            missing = False
            for param, view in zip(self.params, self.views):
                if param.grad is None:
                    view.zero_()
                    missing = True
                else:
                    view.copy_(param.grad)
            if missing:  # fills from Python numbers: kernels, no copy from the host
                for k, param in enumerate(self.params):
                    self.presence[k].fill_(0.0 if param.grad is None else 1.0)
            else:
                self.presence.fill_(1.0)
        self.sent = [(p.grad, p.grad._version if p.grad is not None else None) for p in self.params]
        self.work = dist.all_reduce(self.buffer, op=dist.ReduceOp.SUM, async_op=True)

    def changed_since_sent(self) -> list[torch.Tensor]:
        return [p for p, (grad, version) in zip(self.params, self.sent)
                if p.grad is not grad or (grad is not None and grad._version != version)]

    def complete(self, world_size: int) -> None:
        """Waits for the all-reduce and writes the mean into every ``.grad`` (see the module docstring
        for gradients that are ``None`` on some ranks)."""
        self.work.wait()
        self.work = None
        with torch.no_grad():
            self.buffer[: self.numel].div_(world_size)
            missing = [k for k, p in enumerate(self.params) if p.grad is None]
            present = self.presence.tolist() if missing else []  # a host read only when a gradient is None here
            for k, (param, view) in enumerate(zip(self.params, self.views)):
                if param.grad is not None:
                    param.grad.copy_(view)
                elif present[k] > 0:
                    param.grad = view.clone()
        self.sent = []


class _Layout:
    """The buckets of one tuple of groups and the state of the step in flight."""

    def __init__(self, params: list[torch.Tensor], bucket_bytes: tuple[int, int], world_size: int):
        self.world_size = world_size
        self.buckets: list[_Bucket] = []
        current: list[torch.Tensor] = []
        size = 0
        for param in reversed(params):  # roughly the order in which backward produces the gradients
            nbytes = param.numel() * param.element_size()
            kind = (param.dtype, param.device)
            limit = bucket_bytes[0] if not self.buckets else bucket_bytes[1]
            if current and (size + nbytes > limit or kind != (current[0].dtype, current[0].device)):
                self.buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(param)
            size += nbytes
        if current:
            self.buckets.append(_Bucket(current))
        self.where = {id(p): (b, k) for b, bucket in enumerate(self.buckets) for k, p in enumerate(bucket.params)}
        self.expected: list[list[int]] | None = None  # accumulations per step of each parameter, learned
        self.early = True  # False once a gradient was changed outside autograd after its accumulation
        self.seen: dict[int, tuple] = {}

    def begin(self, overlap: bool) -> None:
        self.counts = [[0] * len(bucket.params) for bucket in self.buckets]
        self.seen = {}
        early = overlap and self.early and self.expected is not None
        # gradients each bucket still waits for before it may go; -1: it goes at the end (sending early
        # is off, or a parameter of it fired no hook in the steps so far)
        self.waiting = [len(expected) if early and min(expected) > 0 else -1
                        for expected in (self.expected if early else [[0]] * len(self.buckets))]
        self.launched = 0

    def accumulated(self, param: torch.Tensor) -> None:
        b, k = self.where.get(id(param), (None, None))
        if b is None:
            return
        self.counts[b][k] += 1
        self.seen[id(param)] = (param.grad, param.grad._version)
        if self.waiting[b] > 0 and self.counts[b][k] == self.expected[b][k]:
            self.waiting[b] -= 1
            while self.launched < len(self.buckets) and self.waiting[self.launched] == 0:
                self.buckets[self.launched].launch()
                self.launched += 1

    def finish(self) -> int:
        """Sends the remaining buckets in order, completes all; returns how many went early."""
        early = self.launched
        for bucket in self.buckets[self.launched:]:
            bucket.launch()
        changed = [p for bucket in self.buckets for p in bucket.params if id(p) in self.seen
                   and (p.grad is not self.seen[id(p)][0]
                        or (p.grad is not None and p.grad._version != self.seen[id(p)][1]))]
        late = [p for bucket in self.buckets[:early] for p in bucket.changed_since_sent()]
        self.seen = {}  # no reference to this step's gradients outlives it
        for bucket in self.buckets:
            bucket.complete(self.world_size)
        if changed:
            self.early = False
        if late:
            raise RuntimeError(f"{len(late)} gradient(s) changed after they were sent to the other processes "
                               f"(shapes {[tuple(p.shape) for p in late[:3]]}): a rule must accumulate its "
                               "gradients through autograd, or only assign them, for data-parallel training")
        self.expected = [[max(a, b) for a, b in zip(old, new)] for old, new in
                         zip(self.expected or [[0] * len(c) for c in self.counts], self.counts)]
        return early
