"""``--sync-batchnorm``: batch normalisation with the statistics of the global batch.

In a data-parallel job each process holds ``batch_size / world_size`` examples of a batch, so a
plain ``BatchNorm`` layer normalises with the mean and variance of that share: the forward pass,
the gradients and the running statistics differ from one process at the whole batch.
:func:`convert_sync_batchnorm` replaces every ``BatchNorm1d/2d/3d`` of a model by
:class:`SyncBatchNorm` (``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which keeps the
parameter and buffer objects and the ``state_dict`` keys), whose training-mode statistics are
summed over the processes: two processes at batch B/2 then equal one process at batch B, to float
rounding.

On CUDA the layer is PyTorch's own ``SyncBatchNorm`` (fused kernels, NCCL). PyTorch's layer
refuses CPU tensors, so on other devices (gloo) the statistics are computed here: the per-channel
sum and example count, then the sum of squared deviations from the global mean, each all-reduced
by an all-reduce whose backward all-reduces the gradient (so the backward pass is that of the
global batch too). In evaluation mode, in a single process, and before a process group exists,
it is plain batch normalisation.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

#: devices on which PyTorch's SyncBatchNorm runs (it refuses the others)
NATIVE_DEVICES = ("cuda", "hpu", "xpu")


class _AllReduceSum(torch.autograd.Function):
    """The sum over the processes; its backward is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=ctx.group)
        return total, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` that also runs on the CPU (see the module docstring)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type in NATIVE_DEVICES:
            return super().forward(input)
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return _BatchNorm.forward(self, input)  # plain batch normalisation
        return self._global_batch_norm(input, group)

    def _global_batch_norm(self, input: torch.Tensor, group) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = x.new_full((1,), x.numel() / x.shape[1])
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centered = x - mean.view(shape)
        var = _AllReduceSum.apply(centered.square().sum(dims), group) / n
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``module`` with every batch-norm layer a :class:`SyncBatchNorm` (the module itself is
    returned changed, or a new one when ``module`` is a batch-norm layer)."""
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for layer in converted.modules():
        if type(layer) is nn.SyncBatchNorm:
            layer.__class__ = SyncBatchNorm
    return converted


def has_sync_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(layer, nn.SyncBatchNorm) for layer in module.modules())
