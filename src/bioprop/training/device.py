"""Which device a run trains on (``--device``)."""

from __future__ import annotations

import torch

from bioprop.errors import BiopropError


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; otherwise the named device, which must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BiopropError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BiopropError(f"device {name!r} requested but CUDA is not available")
    return device
