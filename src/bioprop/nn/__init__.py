"""Neural-network building blocks for bioprop: the layer types beyond torch's, their affine
primitives (``affine.py``) and Glorot from explicit fans (``init.py``)."""

from bioprop.nn.conv_same import Conv2dSame
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
    "Conv2dSame",
    "LocallyConnected2d",
    "lc_forward",
    "lc_input_grad",
    "lc_weight_grad",
    "locally_connected2d",
    "locally_connected2d_transpose",
    "same_padding",
]
