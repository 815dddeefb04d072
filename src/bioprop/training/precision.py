"""Numerical precision of a run: ``fp32``, ``tf32`` or ``bf16``.

* ``fp32``: everything in float32 (the default, and the reference for every test).
* ``tf32``: float32 tensors, but CUDA matmuls and convolutions may use TensorFloat-32 tensor
  cores (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``); no
  effect on the CPU.
* ``bf16``: ``torch.autocast(dtype=torch.bfloat16)`` around the rule's step and evaluation:
  matmuls and convolutions run in bfloat16, while the weights ("master weights"), gradients and
  optimiser states stay float32 (autocast casts copies, and the gradients reach the float32
  leaves). Locally-connected layers join in (their kernels cast to the autocast dtype themselves,
  :mod:`bioprop.nn.locally_connected`). Target propagation computes its targets in float32
  (``TargetPropagationRule.targets``), draws its noise in float32 (the numbers a float32 run
  draws), and its squared-error losses run in float32 (autocast runs ``mse_loss`` in float32).
"""

from __future__ import annotations

import contextlib

import torch


def configure(precision: str) -> None:
    """Process-wide switches for ``precision`` (TF32 on or off)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(precision: str, device: torch.device):
    """The context the rule's step and evaluation run in."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
