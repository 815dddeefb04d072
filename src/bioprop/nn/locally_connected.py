"""Locally-connected 2-D layer: a convolution without weight sharing.

Every output location ``l = (i, j)`` (``L = H' * W'`` of them) has its own filter.  With patches
of ``K = C * kH * kW`` numbers (ordered like a Conv2d kernel) the layer is one batched matmul::

    out[l] (O, N) = W[l] (O, K) @ P[l] (K, N)          P[l] = the N input patches under l

Layout (the point of this module).  ``weight`` has shape ``(H', W', O, C, kH, kW)``
(``weight[i, j]`` is an ordinary Conv2d kernel), so it *is* ``W`` as ``(L, O, K)``, no copy.
Activations are kept *batch-innermost*: outputs have the logical shape ``(N, O, H', W')`` but
are permuted views of an ``(H', W', O, N)`` buffer, exactly the ``(L, O, N)`` result of the
batched matmul.  Elementwise ops (bias, tanh, ...) keep that layout, so the next LC layer and the
backward pass get tensors whose permute to ``(H, W, C, N)`` / ``(L, O, N)`` is free; every copy
then moves whole rows of N numbers, and no matmul operand needs a transposing copy:

* ``lc_forward``      out (L, O, N) = W (L, O, K) @ P (L, K, N)   (+ bias)
* ``lc_input_grad``   dP  (L, K, N) = W^T (L, K, O) @ G (L, O, N), then col2im: kH*kW strided
  ``add_`` of ``dP[..., kh, kw, :]`` into a zeroed, padded (Hp, Wp, C, N) buffer, padding sliced
  off.  This is also the transposed LC map (the adjoint of the forward map).
* ``lc_weight_grad``  dW  (L, O, K) = G (L, O, N) @ P^T (L, N, K)

Patches are gathered with one copy out of a strided window view of the padded input
(``Tensor.unfold``: ``as_strided`` with the input's real strides, so any layout works).  On the
CPU the work goes in chunks of output rows: the patch / dP buffers stay small, stay in cache
between the copy and the matmul, and are recycled by the allocator rather than page-faulted in
on every call.  Tensors in another layout are converted once (contiguous NCHW by a fast blocked
2-D transpose); input grads are handed back in their input's layout.  Outputs are not
contiguous: downstream code must use ``reshape``/``flatten``, not ``view``.

The primitives are plain functions without autograd graph, so feedback alignment can run the
backward pass with another weight; the layer's ``torch.autograd.Function`` uses exactly them.
They compute in one dtype: under autocast (bf16) the autocast dtype, as ``F.conv2d`` would, so
bf16 training runs the LC layers in bf16 too; otherwise their operands' promoted dtype.
"""

import functools
import math

import torch
from torch import nn

from bioprop.errors import BiopropError
from bioprop.nn.init import glorot_uniform_

__all__ = ["LocallyConnected2d", "locally_connected2d", "locally_connected2d_transpose",
           "lc_forward", "lc_input_grad", "lc_weight_grad", "same_padding"]

# Patch / dP buffer per chunk on the CPU: large enough to keep the Python loop cheap, small
# enough to stay in the last-level cache and below glibc's mmap threshold (32 MiB).
_CPU_CHUNK_BYTES = 4 << 20


def _pair(value, name):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise BiopropError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def same_padding(in_size, kernel_size, stride):
    """TensorFlow SAME padding ``(top, bottom, left, right)``: out = ceil(in / stride)."""
    pads = []
    for size, k, s in zip(_pair(in_size, "in_size"), _pair(kernel_size, "kernel_size"),
                          _pair(stride, "stride")):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def _resolve_padding(padding, in_size, kernel_size, stride):
    if isinstance(padding, str):
        if padding in ("same", "valid"):
            return same_padding(in_size, kernel_size, stride) if padding == "same" else (0,) * 4
        raise BiopropError(f"padding must be 'same', 'valid', an int, a pair or a 4-tuple, "
                           f"got unknown string {padding!r}")
    pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
    pads = (pads[0], pads[0], pads[1], pads[1]) if len(pads) == 2 else pads
    if len(pads) != 4 or not all(isinstance(p, int) and p >= 0 for p in pads):
        raise BiopropError(f"padding must be non-negative ints (int, (ph, pw) or "
                           f"(top, bottom, left, right)), got {padding!r}")
    return pads


def _geometry(in_size, kernel_size, stride, padding):
    """Checks the arguments; returns (kernel, stride, (top, bottom, left, right), out_size)."""
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
    if min(kh, kw) < 1 or min(sh, sw) < 1:
        name, value = ("stride", stride) if min(sh, sw) < 1 else ("kernel_size", kernel_size)
        raise BiopropError(f"{name} must be positive, got {value!r}")
    h, w = _pair(in_size, "in_size")
    pads = _resolve_padding(padding, (h, w), (kh, kw), (sh, sw))
    padded = (h + pads[0] + pads[1], w + pads[2] + pads[3])
    if kh > padded[0] or kw > padded[1]:
        raise BiopropError(f"kernel_size {(kh, kw)} is larger than the padded input {padded} "
                           f"(input {(h, w)}, padding {pads})")
    return (kh, kw), (sh, sw), pads, ((padded[0] - kh) // sh + 1, (padded[1] - kw) // sw + 1)


def _batch_innermost(t):
    """(N, C, H, W) -> the same values as an (H, W, C, N) tensor with unit batch stride.

    Free in our own layout.  Contiguous NCHW goes through one blocked 2-D transpose
    (N, CHW) -> (CHW, N) (aten's fast transposing copy), several times faster than a generic
    permuting copy, and comes back as a permuted view of that (C, H, W, N) buffer.
    """
    t_hwcn = t.permute(2, 3, 1, 0)
    if t_hwcn.stride(-1) == 1 or t.shape[0] == 1:
        return t_hwcn
    if not t.is_contiguous():
        return t_hwcn.contiguous()
    n, c, h, w = t.shape
    return t.reshape(n, c * h * w).t().contiguous().view(c, h, w, n).permute(1, 2, 0, 3)


def _to_nchw_if(t, nchw):
    """Batch-innermost ``t`` as contiguous NCHW if ``nchw`` (a grad in its input's layout)."""
    if not nchw or t.is_contiguous():
        return t
    n, c, h, w = t.shape
    chwn = t.permute(1, 2, 3, 0).contiguous()                         # rows of N numbers
    return chwn.view(c * h * w, n).t().contiguous().view(n, c, h, w)  # blocked 2-D transpose


def _padded_hwcn(x, pads):
    """The zero-padded input as an (H + pt + pb, W + pl + pr, C, N) tensor, unit batch stride."""
    x_hwcn = _batch_innermost(x)
    if not any(pads):
        return x_hwcn
    top, bottom, left, right = pads
    h, w, c, n = x_hwcn.shape
    padded = x.new_empty(h + top + bottom, w + left + right, c, n)
    for border in (padded[:top], padded[top + h:], padded[top:top + h, :left],
                   padded[top:top + h, left + w:]):
        border.zero_()
    padded[top:top + h, left:left + w].copy_(x_hwcn)
    return padded


def _chunk_buffers(out_size, k, n, like):
    """Yields (l0, l1, buffer (l1 - l0, K, N)) per chunk of output rows; one buffer reused.

    A single chunk off the CPU, where a big batched matmul is what keeps the device busy.
    """
    out_h, out_w = out_size
    rows = out_h
    if like.device.type == "cpu":
        rows = max(1, min(out_h, _CPU_CHUNK_BYTES // (out_w * k * n * like.element_size())))
    buffer = like.new_empty(rows * out_w * k * n)
    for r0 in range(0, out_h, rows):
        r1 = min(r0 + rows, out_h)
        yield r0 * out_w, r1 * out_w, buffer[:(r1 - r0) * out_w * k * n].view(-1, k, n)


def _patch_chunks(x, kernel, stride, pads, out_size):
    """Yields (l0, l1, patches (l1 - l0, K, N)) of locations l0..l1-1, one copy per chunk."""
    windows = _padded_hwcn(x, pads).unfold(0, kernel[0], stride[0]).unfold(1, kernel[1], stride[1])
    windows = windows[:out_size[0], :out_size[1]].permute(0, 1, 2, 4, 5, 3)  # H',W',C,kH,kW,N
    n, c, out_w = x.shape[0], x.shape[1], out_size[1]
    for l0, l1, patches in _chunk_buffers(out_size, c * kernel[0] * kernel[1], n, x):
        patches.view(-1, out_w, *windows.shape[2:]).copy_(windows[l0 // out_w:l1 // out_w])
        yield l0, l1, patches


def autocast_dtype(device_type):
    """The autocast dtype if autocast is on for ``device_type``, else None."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # a device type without autocast
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def _operands(*tensors):
    """The operands (``None`` kept) in one dtype, as a matmul under autocast gets them: autocast's
    dtype where it is on for their device and none is float64 (the batched matmuls here write into
    buffers, ``bmm(out=)``, which autocast itself leaves alone), else their promoted dtype."""
    present = [t for t in tensors if t is not None]
    dtype = autocast_dtype(present[0].device.type)
    if dtype is None or any(t.dtype == torch.float64 for t in present):
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in present))
    return [None if t is None else t.to(dtype) for t in tensors]


def _check_shape(name, tensor, expected):
    if tuple(tensor.shape) != tuple(expected):
        raise BiopropError(f"{name} must have shape {tuple(expected)}, got {tuple(tensor.shape)}")


@torch.no_grad()
def lc_forward(x, weight, bias=None, stride=1, padding=(0, 0, 0, 0)):
    """Raw LC forward, no graph: (N, C, H, W) -> (N, O, H', W') (batch-innermost layout)."""
    x, weight, bias = _operands(x, weight, bias)
    n, c, h, w = x.shape
    kernel, stride, pads, (out_h, out_w) = _geometry((h, w), weight.shape[4:], stride, padding)
    o, k = weight.shape[2], c * kernel[0] * kernel[1]
    _check_shape("weight (H', W', O, C, kH, kW)", weight, (out_h, out_w, o, c, *kernel))
    w_lok = weight.reshape(out_h * out_w, o, k)
    bias_lo1 = None if bias is None else bias.permute(1, 2, 0).reshape(out_h * out_w, o, 1)
    out = x.new_empty(out_h * out_w, o, n)
    for l0, l1, patches in _patch_chunks(x, kernel, stride, pads, (out_h, out_w)):
        torch.bmm(w_lok[l0:l1], patches, out=out[l0:l1])
        if bias_lo1 is not None:
            out[l0:l1] += bias_lo1[l0:l1]
    return out.view(out_h, out_w, o, n).permute(3, 2, 0, 1)


@torch.no_grad()
def lc_input_grad(grad_out, weight, in_size, stride, padding):
    """Raw transposed LC map (N, O, H', W') -> (N, C, H, W): the gradient w.r.t. the input."""
    grad_out, weight = _operands(grad_out, weight)
    out_h, out_w, o, c, kh, kw = weight.shape
    _, (sh, sw), pads, out_size = _geometry(in_size, (kh, kw), stride, padding)
    n, k = grad_out.shape[0], c * kh * kw
    _check_shape("weight (H', W', O, C, kH, kW)", weight, (*out_size, o, c, kh, kw))
    _check_shape("grad_out (N, O, H', W')", grad_out, (n, o, *out_size))
    w_lok, g_lon = weight.reshape(out_h * out_w, o, k), _batch_innermost(grad_out).reshape(-1, o, n)
    (h, w), (top, bottom, left, right) = _pair(in_size, "in_size"), pads
    grad_in = grad_out.new_zeros(h + top + bottom, w + left + right, c, n)
    scatter = torch.Tensor.copy_ if sh >= kh and sw >= kw else torch.Tensor.add_  # no overlap?
    for l0, l1, dp in _chunk_buffers(out_size, k, n, grad_out):
        torch.bmm(w_lok[l0:l1].transpose(1, 2), g_lon[l0:l1], out=dp)
        r0, r1 = l0 // out_w, l1 // out_w
        dp = dp.view(r1 - r0, out_w, c, kh, kw, n)
        for i in range(kh):
            rows = grad_in[r0 * sh + i:(r1 - 1) * sh + i + 1:sh]
            for j in range(kw):
                scatter(rows[:, j:(out_w - 1) * sw + j + 1:sw], dp[:, :, :, i, j])
    return grad_in[top:top + h, left:left + w].permute(3, 2, 0, 1)


@torch.no_grad()
def lc_weight_grad(x, grad_out, kernel_size, stride, padding):
    """Raw gradient w.r.t. the weight, (H', W', O, C, kH, kW), from input and output grad."""
    x, grad_out = _operands(x, grad_out)
    n, c, h, w = x.shape
    kernel, stride, pads, (out_h, out_w) = _geometry((h, w), kernel_size, stride, padding)
    o = grad_out.shape[1]
    _check_shape("grad_out (N, O, H', W')", grad_out, (n, o, out_h, out_w))
    g_lon = _batch_innermost(grad_out).reshape(-1, o, n)
    grad_w = x.new_empty(out_h * out_w, o, c * kernel[0] * kernel[1])
    for l0, l1, patches in _patch_chunks(x, kernel, stride, pads, (out_h, out_w)):
        torch.bmm(g_lon[l0:l1], patches.transpose(1, 2), out=grad_w[l0:l1])
    return grad_w.view(out_h, out_w, o, c, *kernel)


# The Functions pad once and hand the padded input (a permuted view of the padded buffer) with
# zero padding to both primitives that need it: same patches, so bit for bit the same results.

class _LCFunction(torch.autograd.Function):
    """y = LC(x; W) + b; backward from the primitives (input grad = the transposed map)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        x, weight, bias = _operands(x, weight, bias)  # cast once: what backward saves is in that dtype too
        pads = _geometry(x.shape[2:], weight.shape[4:], stride, padding)[2]
        padded_x = _padded_hwcn(x, pads).permute(3, 2, 0, 1)
        ctx.save_for_backward(padded_x, weight)
        ctx.geometry, ctx.x_is_nchw = (tuple(x.shape[2:]), stride, pads), x.is_contiguous()
        return lc_forward(padded_x, weight, bias, stride, 0)

    @staticmethod
    def backward(ctx, grad_out):
        padded_x, weight = ctx.saved_tensors
        in_size, stride, pads = ctx.geometry
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _to_nchw_if(lc_input_grad(grad_out, weight, in_size, stride, pads),
                                 ctx.x_is_nchw)
        if ctx.needs_input_grad[1]:
            grad_w = lc_weight_grad(padded_x, grad_out, weight.shape[4:], stride, 0)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, None, None


class _LCTransposeFunction(torch.autograd.Function):
    """x = LC^T(y; W), no bias.  grad_y = LC(grad_x), grad_W = lc_weight_grad(grad_x, y)."""

    @staticmethod
    def forward(ctx, y, weight, in_size, stride, padding):
        y, weight = _operands(y, weight)  # cast once: what backward saves is in that dtype too
        pads = _geometry(in_size, weight.shape[4:], stride, padding)[2]
        ctx.save_for_backward(y, weight)
        ctx.geometry, ctx.y_is_nchw = (in_size, stride, pads), y.is_contiguous()
        return lc_input_grad(y, weight, in_size, stride, pads)

    @staticmethod
    def backward(ctx, grad_x):
        y, weight = ctx.saved_tensors
        in_size, stride, pads = ctx.geometry
        padded_grad = _padded_hwcn(grad_x, pads).permute(3, 2, 0, 1)
        grad_y = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_y = _to_nchw_if(lc_forward(padded_grad, weight, None, stride, 0), ctx.y_is_nchw)
        if ctx.needs_input_grad[1]:
            grad_w = lc_weight_grad(padded_grad, y, weight.shape[4:], stride, 0)
        return grad_y, grad_w, None, None, None


def locally_connected2d(x, weight, bias=None, stride=1, padding=(0, 0, 0, 0)):
    """Functional LC forward (N, C, H, W) -> (N, O, H', W'), differentiable w.r.t. x, W, b."""
    if x.dim() != 4:
        raise BiopropError(f"input must be (N, C, H, W), got shape {tuple(x.shape)}")
    return _LCFunction.apply(x, weight, bias, stride, padding)


def locally_connected2d_transpose(y, weight, in_size, stride=1, padding=(0, 0, 0, 0)):
    """Functional transposed LC map (N, O, H', W') -> (N, C, H, W), differentiable w.r.t. y, W."""
    if y.dim() != 4:
        raise BiopropError(f"input must be (N, O, H', W'), got shape {tuple(y.shape)}")
    return _LCTransposeFunction.apply(y, weight, _pair(in_size, "in_size"), stride, padding)


class LocallyConnected2d(nn.Module):
    """2-D convolution without weight sharing (one filter per output location).

    ``padding``: ``"same"`` (TensorFlow SAME, out = ceil(in / stride)), ``"valid"``, an int or
    ``(ph, pw)``.  ``weight`` is (H', W', O, C, kH, kW), ``bias`` is (O, H', W').  Outputs are
    batch-innermost permuted views (see the module docstring): use ``reshape``, not ``view``.
    """

    def __init__(self, in_channels, out_channels, in_size, kernel_size, stride=1, padding="same",
                 bias=True, device=None, dtype=None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise BiopropError(f"{name} must be a positive int, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size = _pair(in_size, "in_size")
        if min(self.in_size) < 1:
            raise BiopropError(f"in_size must be positive, got {in_size!r}")
        self.kernel_size, self.stride, self.padding, self.out_size = _geometry(
            self.in_size, kernel_size, stride, padding)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(*self.out_size, out_channels, in_channels,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, *self.out_size, **factory)) \
            if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """Glorot uniform with Keras' conv fans (C*kH*kW in, O*kH*kW out); zero bias."""
        area = self.kernel_size[0] * self.kernel_size[1]
        glorot_uniform_(self.weight, self.in_channels * area, self.out_channels * area)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input(self, x, channels, size, what):
        if x.dim() != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != tuple(size):
            raise BiopropError(f"{type(self).__name__}.{what} expects input of shape (N, C, H, W) "
                               f"with (C, H, W) = ({channels}, {size[0]}, {size[1]}), got "
                               f"{tuple(x.shape)}")

    def forward(self, x):
        self._check_input(x, self.in_channels, self.in_size, "forward")
        return _LCFunction.apply(x, self.weight, self.bias, self.stride, self.padding)

    def transpose(self, y, weight=None):
        """The adjoint map (N, O, H', W') -> (N, C, H, W), no bias; ``weight`` defaults to ours."""
        self._check_input(y, self.out_channels, self.out_size, "transpose")
        weight = self.weight if weight is None else weight
        _check_shape("weight", weight, self.weight.shape)
        return _LCTransposeFunction.apply(y, weight, self.in_size, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, in_size={self.in_size}, "
                f"out_size={self.out_size}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
