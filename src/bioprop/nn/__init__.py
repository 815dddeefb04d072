"""Neural-network building blocks for bioprop."""

from bioprop.nn.locally_connected import (
    LocallyConnected2d,
    lc_forward,
    lc_input_grad,
    lc_weight_grad,
    locally_connected2d,
    locally_connected2d_transpose,
    same_padding,
)

__all__ = [
    "LocallyConnected2d",
    "lc_forward",
    "lc_input_grad",
    "lc_weight_grad",
    "locally_connected2d",
    "locally_connected2d_transpose",
    "same_padding",
]
