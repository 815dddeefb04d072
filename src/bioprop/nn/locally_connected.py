"""Locally-connected 2-D layer: a convolution without weight sharing.

Every output location ``l = (i, j)`` (``L = H' * W'`` of them) has its own filter, so the layer is
``L`` independent small matrix products.  With ``K = C * kH * kW`` (a patch, ordered like a Conv2d
kernel) the whole layer is one batched matmul over locations::

    out[l] (O, N) = W[l] (O, K) @ P[l] (K, N)          P[l] = input patches under location l

Memory layout (the point of this module).  The parameter ``weight`` has shape
``(H', W', O, C, kH, kW)`` (``weight[i, j]`` is an ordinary Conv2d kernel), i.e. it *is* ``W``
viewed as ``(L, O, K)`` with no copy.  Activations are kept *batch-innermost*: the tensors this
module returns have the logical shape ``(N, O, H', W')`` but are permuted views of an
``(H', W', O, N)`` buffer, which is exactly the ``(L, O, N)`` output of the batched matmul.
Elementwise ops (bias, tanh, ...) keep that layout, so the next LC layer and the backward pass get
tensors whose permute to ``(H, W, C, N)`` is free.  In that layout every copy we do moves whole
contiguous rows of N numbers, and all matmuls take their operands without transposing copies:

* ``lc_forward``     out (L, O, N) = W (L, O, K) @ P (L, K, N)            (+ bias)
* ``lc_input_grad``  dP  (L, K, N) = W^T (L, K, O) @ G (L, O, N), then col2im: kH*kW strided
  ``add_`` of dP[..., kh, kw, :] into a zeroed padded (Hp, Wp, C, N) buffer; padding is sliced
  off.  This is also the transposed LC map (the adjoint of the forward map).
* ``lc_weight_grad`` dW  (L, O, K) = G (L, O, N) @ P^T (L, N, K)

Patches ``P`` are gathered from the padded input with one copy out of a strided window view
(``Tensor.unfold``, i.e. ``as_strided`` with the input's real strides, so any input layout works).
On CPU the work is done in chunks of output rows, so the patch / dP buffers stay small: they stay
in cache between the gather and the matmul, and are recycled by the allocator instead of being
page-faulted in every step.  Inputs or grads in another layout (e.g. plain contiguous NCHW) are
copied once into the batch-innermost layout.  Downstream code must use ``reshape``/``flatten``
rather than ``view`` on the outputs, which are not contiguous.

The three primitives are plain functions (no autograd graph), so that feedback alignment can run
the backward pass with another weight; ``LocallyConnected2d`` uses exactly them in its
``torch.autograd.Function``.
"""

import math

import torch
from torch import nn

from bioprop.errors import BiopropError

__all__ = ["LocallyConnected2d", "locally_connected2d", "locally_connected2d_transpose",
           "lc_forward", "lc_input_grad", "lc_weight_grad", "same_padding"]

# Work per chunk on CPU (bytes of patch buffer); big enough to keep Python overhead small,
# small enough to stay in the last-level cache and below glibc's mmap threshold.
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
        if padding == "same":
            return same_padding(in_size, kernel_size, stride)
        if padding == "valid":
            return (0, 0, 0, 0)
        raise BiopropError(f"padding must be 'same', 'valid', an int, a pair or a 4-tuple, "
                           f"got unknown string {padding!r}")
    pads = tuple(padding) if not isinstance(padding, int) else (padding,) * 4
    if len(pads) == 2:
        pads = (pads[0], pads[0], pads[1], pads[1])
    if len(pads) != 4 or not all(isinstance(p, int) and p >= 0 for p in pads):
        raise BiopropError(f"padding must be non-negative ints (int, (ph, pw) or "
                           f"(top, bottom, left, right)), got {padding!r}")
    return pads


def _geometry(in_size, kernel_size, stride, padding):
    """Checks the arguments; returns (kernel, stride, padding 4-tuple, out_size)."""
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
    if min(kh, kw) < 1:
        raise BiopropError(f"kernel_size must be positive, got {kernel_size!r}")
    if min(sh, sw) < 1:
        raise BiopropError(f"stride must be positive, got {stride!r}")
    (h, w) = _pair(in_size, "in_size")
    pads = _resolve_padding(padding, (h, w), (kh, kw), (sh, sw))
    padded = (h + pads[0] + pads[1], w + pads[2] + pads[3])
    if kh > padded[0] or kw > padded[1]:
        raise BiopropError(f"kernel_size {(kh, kw)} is larger than the padded input {padded} "
                           f"(input {(h, w)}, padding {pads})")
    out_size = ((padded[0] - kh) // sh + 1, (padded[1] - kw) // sw + 1)
    return (kh, kw), (sh, sw), pads, out_size


def _padded_hwcn(x, pads):
    """The input as an (H + pt + pb, W + pl + pr, C, N) tensor; copies only when needed."""
    x_hwcn = x.permute(2, 3, 1, 0)
    if not any(pads) and (x_hwcn.stride(-1) == 1 or x_hwcn.shape[-1] == 1):
        return x_hwcn
    top, bottom, left, right = pads
    h, w, c, n = x_hwcn.shape
    padded = x.new_empty(h + top + bottom, w + left + right, c, n)
    for border in (padded[:top], padded[top + h:], padded[top:top + h, :left],
                   padded[top:top + h, left + w:]):
        border.zero_()
    padded[top:top + h, left:left + w].copy_(x_hwcn)
    return padded


def _as_lon(grad_out):
    """Grad (N, O, H', W') as a contiguous (L, O, N) matrix batch; free in our own layout."""
    n, o, h, w = grad_out.shape
    g = grad_out.permute(2, 3, 1, 0)
    return (g if g.is_contiguous() else g.contiguous()).view(h * w, o, n)


def _row_chunks(out_size, k, n, like):
    """Yields (first row, end row) of output-row chunks; one chunk off the CPU."""
    out_h, out_w = out_size
    rows = out_h
    if like.device.type == "cpu":
        rows = max(1, min(out_h, _CPU_CHUNK_BYTES // (out_w * k * n * like.element_size())))
    for r0 in range(0, out_h, rows):
        yield r0, min(r0 + rows, out_h)


def _patch_windows(x, kernel, stride, pads, out_size):
    """Strided view (H', W', C, kH, kW, N) of the padded input's patches; no copy of patches."""
    windows = _padded_hwcn(x, pads).unfold(0, kernel[0], stride[0]).unfold(1, kernel[1], stride[1])
    return windows[:out_size[0], :out_size[1]].permute(0, 1, 2, 4, 5, 3)


def _check_weight(weight, out_size, channels, kernel):
    if weight.dim() != 6 or tuple(weight.shape[:2]) != tuple(out_size) \
            or weight.shape[3] != channels or tuple(weight.shape[4:]) != tuple(kernel):
        raise BiopropError(f"weight must have shape (H', W', O, C, kH, kW) = "
                           f"({out_size[0]}, {out_size[1]}, O, {channels}, {kernel[0]}, "
                           f"{kernel[1]}), got {tuple(weight.shape)}")


@torch.no_grad()
def lc_forward(x, weight, bias=None, stride=1, padding=(0, 0, 0, 0)):
    """Raw LC forward (no graph): (N, C, H, W) -> (N, O, H', W') in batch-innermost layout."""
    n, c, h, w = x.shape
    kernel, stride, pads, out_size = _geometry((h, w), weight.shape[4:], stride, padding)
    _check_weight(weight, out_size, c, kernel)
    out_h, out_w = out_size
    o, k = weight.shape[2], c * kernel[0] * kernel[1]
    w_lok = weight.reshape(out_h * out_w, o, k)
    windows = _patch_windows(x, kernel, stride, pads, out_size)
    out = x.new_empty(out_h * out_w, o, n)
    bias_lo1 = None if bias is None else bias.permute(1, 2, 0).reshape(out_h * out_w, o, 1)
    patch_buffer = None
    for r0, r1 in _row_chunks(out_size, k, n, x):
        l0, l1 = r0 * out_w, r1 * out_w
        if patch_buffer is None:
            patch_buffer = x.new_empty((l1 - l0) * k * n)
        patches = patch_buffer[:(l1 - l0) * k * n].view(r1 - r0, out_w, *windows.shape[2:])
        patches.copy_(windows[r0:r1])
        torch.bmm(w_lok[l0:l1], patches.view(l1 - l0, k, n), out=out[l0:l1])
        if bias_lo1 is not None:
            out[l0:l1] += bias_lo1[l0:l1]
    return out.view(out_h, out_w, o, n).permute(3, 2, 0, 1)


@torch.no_grad()
def lc_input_grad(grad_out, weight, in_size, stride, padding):
    """Raw transposed LC map (N, O, H', W') -> (N, C, H, W): the gradient w.r.t. the input."""
    out_h, out_w, o, c, kh, kw = weight.shape
    kernel, (sh, sw), pads, out_size = _geometry(in_size, (kh, kw), stride, padding)
    _check_weight(weight, out_size, c, kernel)
    n, k = grad_out.shape[0], c * kh * kw
    w_lok, g_lon = weight.reshape(out_h * out_w, o, k), _as_lon(grad_out)
    (h, w), (top, bottom, left, right) = _pair(in_size, "in_size"), pads
    grad_in = grad_out.new_zeros(h + top + bottom, w + left + right, c, n)
    scatter = torch.Tensor.copy_ if sh >= kh and sw >= kw else torch.Tensor.add_
    dp_buffer = None
    for r0, r1 in _row_chunks(out_size, k, n, grad_out):
        l0, l1 = r0 * out_w, r1 * out_w
        if dp_buffer is None:
            dp_buffer = grad_out.new_empty((l1 - l0) * k * n)
        dp = dp_buffer[:(l1 - l0) * k * n].view(l1 - l0, k, n)
        torch.bmm(w_lok[l0:l1].transpose(1, 2), g_lon[l0:l1], out=dp)
        dp = dp.view(r1 - r0, out_w, c, kh, kw, n)
        for i in range(kh):
            rows = grad_in[r0 * sh + i:(r1 - 1) * sh + i + 1:sh]
            for j in range(kw):
                scatter(rows[:, j:(out_w - 1) * sw + j + 1:sw], dp[:, :, :, i, j])
    return grad_in[top:top + h, left:left + w].permute(3, 2, 0, 1)


@torch.no_grad()
def lc_weight_grad(x, grad_out, kernel_size, stride, padding):
    """Raw gradient w.r.t. the weight: (H', W', O, C, kH, kW) from input and output grad."""
    n, c, h, w = x.shape
    kernel, stride, pads, out_size = _geometry((h, w), kernel_size, stride, padding)
    out_h, out_w = out_size
    o, k = grad_out.shape[1], c * kernel[0] * kernel[1]
    if tuple(grad_out.shape) != (n, o, out_h, out_w):
        raise BiopropError(f"grad_out must have shape (N, O, H', W') = ({n}, O, {out_h}, "
                           f"{out_w}), got {tuple(grad_out.shape)}")
    g_lon = _as_lon(grad_out)
    windows = _patch_windows(x, kernel, stride, pads, out_size)
    grad_w = x.new_empty(out_h * out_w, o, k)
    patch_buffer = None
    for r0, r1 in _row_chunks(out_size, k, n, x):
        l0, l1 = r0 * out_w, r1 * out_w
        if patch_buffer is None:
            patch_buffer = x.new_empty((l1 - l0) * k * n)
        patches = patch_buffer[:(l1 - l0) * k * n].view(r1 - r0, out_w, *windows.shape[2:])
        patches.copy_(windows[r0:r1])
        torch.bmm(g_lon[l0:l1], patches.view(l1 - l0, k, n).transpose(1, 2), out=grad_w[l0:l1])
    return grad_w.view(out_h, out_w, o, c, *kernel)


def _padded_input(x, pads):
    """The zero-padded input as a logical (N, C, Hp, Wp) tensor (batch-innermost in memory).

    The Functions pad once and hand the padded input with zero padding to both primitives that
    need it; the patches, and so the results, are bit for bit those of the unpadded call.
    """
    return _padded_hwcn(x, pads).permute(3, 2, 0, 1)


class _LCFunction(torch.autograd.Function):
    """y = LC(x; W) + b, with the backward built from the raw primitives."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        padded_x = _padded_input(x, _geometry(x.shape[2:], weight.shape[4:], stride, padding)[2])
        ctx.save_for_backward(padded_x, weight)
        ctx.geometry = (tuple(x.shape[2:]), stride, padding)
        return lc_forward(padded_x, weight, bias, stride, 0)

    @staticmethod
    def backward(ctx, grad_out):
        padded_x, weight = ctx.saved_tensors
        in_size, stride, padding = ctx.geometry
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = lc_input_grad(grad_out, weight, in_size, stride, padding)
        if ctx.needs_input_grad[1]:
            grad_w = lc_weight_grad(padded_x, grad_out, weight.shape[4:], stride, 0)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, None, None


class _LCTransposeFunction(torch.autograd.Function):
    """x = LC^T(y; W), the adjoint of the forward map (no bias)."""

    @staticmethod
    def forward(ctx, y, weight, in_size, stride, padding):
        ctx.save_for_backward(y, weight)
        ctx.geometry = (in_size, stride, padding)
        return lc_input_grad(y, weight, in_size, stride, padding)

    @staticmethod
    def backward(ctx, grad_x):
        y, weight = ctx.saved_tensors
        in_size, stride, padding = ctx.geometry
        padded_grad = _padded_input(grad_x, _geometry(in_size, weight.shape[4:], stride, padding)[2])
        grad_y = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_y = lc_forward(padded_grad, weight, None, stride, 0)
        if ctx.needs_input_grad[1]:
            grad_w = lc_weight_grad(padded_grad, y, weight.shape[4:], stride, 0)
        return grad_y, grad_w, None, None, None


def locally_connected2d(x, weight, bias=None, stride=1, padding=(0, 0, 0, 0)):
    """Functional LC forward, differentiable w.r.t. x, weight and bias."""
    if x.dim() != 4:
        raise BiopropError(f"input must be (N, C, H, W), got shape {tuple(x.shape)}")
    return _LCFunction.apply(x, weight, bias, stride, padding)


def locally_connected2d_transpose(y, weight, in_size, stride=1, padding=(0, 0, 0, 0)):
    """Functional transposed LC map (N, O, H', W') -> (N, C, H, W), differentiable w.r.t. y and W."""
    out_h, out_w, o = weight.shape[:3]
    if y.dim() != 4 or tuple(y.shape[1:]) != (o, out_h, out_w):
        raise BiopropError(f"input of the transposed map must be (N, O, H', W') = "
                           f"(N, {o}, {out_h}, {out_w}), got shape {tuple(y.shape)}")
    return _LCTransposeFunction.apply(y, weight, tuple(_pair(in_size, "in_size")), stride, padding)


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
        """Glorot uniform with Keras' conv fans: C*kH*kW in, O*kH*kW out; zero bias."""
        area = self.kernel_size[0] * self.kernel_size[1]
        bound = math.sqrt(6.0 / (self.in_channels * area + self.out_channels * area))
        nn.init.uniform_(self.weight, -bound, bound)
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
        if weight.shape != self.weight.shape:
            raise BiopropError(f"weight must have shape {tuple(self.weight.shape)}, "
                               f"got {tuple(weight.shape)}")
        return _LCTransposeFunction.apply(y, weight, self.in_size, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, in_size={self.in_size}, "
                f"out_size={self.out_size}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
