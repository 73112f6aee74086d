"""2-D max and average pooling over NCHW batches.

Notation: x is (N, C, H, W), the window is KH x KW, SH, SW the strides, PH,
PW the padding (at most half the window), y is (N, C, OH, OW). The output
size, as in PyTorch, is

    OH = floor_or_ceil((H + 2*PH - KH) / SH) + 1      (ceil with ceil_mode)

and, with ceil_mode, one less if the last window would start past the input
and the left padding ((OH - 1)*SH >= H + PH). A ceil_mode window may hang
past the padded input: those positions count as padding (-inf for max, so
they never win; left out of the divisor for average).

Both pools loop over the KH*KW offsets of the window, never over pixels: for
one offset (kh, kw), the value at that offset of every window is one strided
slice of the padded input,

    tap(kh, kw) = x_pad[:, :, kh : kh + SH*OH : SH, kw : kw + SW*OW : SW]   (N, C, OH, OW)

Max pooling keeps the running maximum of the taps and which tap won
(kh * KW + kw; a later tap wins only if strictly greater, so ties go to the
first, as in PyTorch). Its backward adds gy to the winning tap of each
window. Average pooling sums the taps and divides by the window's size; its
backward adds gy / size to every tap.

The fast paths (tinygnet/kernels): on the CPU, separable passes over flat
arrays on several threads; on the GPU, max pooling as CUDA kernels.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..tensor import Function
from .checks import check_float, check_ndim, pair

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "pool_output_size"]


def pool_output_size(size, kernel, stride, padding, ceil_mode):
    """OH from H (or OW from W), exactly as PyTorch's pooling_output_shape."""
    span = size + 2 * padding - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1   # the last window must start inside the input or the left padding
    return out


def _pad(x, PH, PW, OH, OW, KH, KW, SH, SW, value):
    """x with PH, PW of ``value`` on each side, and more of it at the bottom and
    right where a ceil_mode window hangs past: (N, C, HP, WP)."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    HP = max(H + 2 * PH, (OH - 1) * SH + KH)
    WP = max(W + 2 * PW, (OW - 1) * SW + KW)
    x_pad = xp.full((N, C, HP, WP), value, dtype=x.dtype)
    x_pad[:, :, PH:PH + H, PW:PW + W] = x
    return x_pad


def _tap(a, kh, kw, SH, SW, OH, OW):
    """The element at offset (kh, kw) of every window: a strided view (N, C, OH, OW)."""
    return a[:, :, kh:kh + SH * OH:SH, kw:kw + SW * OW:SW]


class MaxPool2d(Function):
    """y[n, c, oh, ow] = max of the window; the gradient goes to the (first) max."""

    def forward(self, x, kernel_size, stride, padding, ceil_mode):
        xp = get_array_module(x)
        (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
        N, C, H, W = x.shape
        OH = pool_output_size(H, KH, SH, PH, ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, ceil_mode)
        x_pad = _pad(x, PH, PW, OH, OW, KH, KW, SH, SW, value=-np.inf)   # N, C, HP, WP
        y = _tap(x_pad, 0, 0, SH, SW, OH, OW).copy()                     # N, C, OH, OW
        # which tap won, kh * KW + kw, in the smallest integer type that holds them
        winner = xp.zeros(y.shape, dtype=np.min_scalar_type(KH * KW - 1))
        for kh in range(KH):
            for kw in range(KW):
                tap = _tap(x_pad, kh, kw, SH, SW, OH, OW)
                better = tap > y                   # strictly: ties keep the earlier tap
                y = xp.where(better, tap, y)
                winner[better] = kh * KW + kw
        if self.needs_input_grad[0]:
            self.winner = winner                   # backward needs only where each max was
            self.geometry = (x.shape, x_pad.shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        x_shape, pad_shape, KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        N, C, H, W = x_shape
        gx_pad = xp.zeros(pad_shape, dtype=gy.dtype)                     # N, C, HP, WP
        for kh in range(KH):
            for kw in range(KW):
                won = self.winner == kh * KW + kw                        # N, C, OH, OW
                _tap(gx_pad, kh, kw, SH, SW, OH, OW)[...] += xp.where(won, gy, 0)
        return gx_pad[:, :, PH:PH + H, PW:PW + W]


class AvgPool2d(Function):
    """y[n, c, oh, ow] = sum of the window / divisor[oh, ow]."""

    def forward(self, x, kernel_size, stride, padding, ceil_mode, count_include_pad):
        xp = get_array_module(x)
        (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
        N, C, H, W = x.shape
        OH = pool_output_size(H, KH, SH, PH, ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, ceil_mode)
        x_pad = _pad(x, PH, PW, OH, OW, KH, KW, SH, SW, value=0)         # N, C, HP, WP
        total = xp.zeros((N, C, OH, OW), dtype=x.dtype)
        for kh in range(KH):
            for kw in range(KW):
                total += _tap(x_pad, kh, kw, SH, SW, OH, OW)
        divisor = window_sizes(H, W, kernel_size, stride, padding, (OH, OW), count_include_pad)
        divisor = xp.asarray(divisor, dtype=x.dtype)                     # OH, OW
        if self.needs_input_grad[0]:
            self.divisor = divisor
            self.geometry = (x.shape, x_pad.shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return total / divisor

    def backward(self, gy):
        xp = get_array_module(gy)
        x_shape, pad_shape, KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        N, C, H, W = x_shape
        g = gy / self.divisor                      # what each position of a window gets
        gx_pad = xp.zeros(pad_shape, dtype=gy.dtype)
        for kh in range(KH):
            for kw in range(KW):
                _tap(gx_pad, kh, kw, SH, SW, OH, OW)[...] += g   # overlapping windows add up
        return gx_pad[:, :, PH:PH + H, PW:PW + W]


def window_sizes(H, W, kernel_size, stride, padding, output_size, count_include_pad):
    """The divisor of each output position (OH, OW), a host (NumPy) array.

    As PyTorch's kernel: the window [start, end) is clipped to the padded input
    (end <= size + padding); without count_include_pad, clipped to the input.
    """
    def per_axis(size, kernel, stride, padding, out):
        start = np.arange(out) * stride - padding
        end = np.minimum(start + kernel, size + padding)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        return end - start

    (KH, KW), (SH, SW), (PH, PW), (OH, OW) = kernel_size, stride, padding, output_size
    return np.outer(per_axis(H, KH, SH, PH, OH), per_axis(W, KW, SW, PW, OW))


class GlobalAvgPool2d(Function):
    """y[n, c] = mean of x[n, c] over H, W, kept as (N, C, 1, 1)."""

    def forward(self, x):
        self.x_shape = x.shape
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, gy):
        xp = get_array_module(gy)
        N, C, H, W = self.x_shape
        gx = xp.empty(self.x_shape, dtype=gy.dtype)
        gx[...] = gy / (H * W)                 # each position gets 1/(H*W) of gy
        return gx


# --------------------------------------------------------------------------
# The functions users call
# --------------------------------------------------------------------------
def _pool_arguments(op, x, kernel_size, stride, padding, ceil_mode):
    check_ndim(x, 4, op, "NCHW")
    check_float(x, op)
    kernel_size = pair(kernel_size, "kernel_size", op, minimum=1)
    stride = kernel_size if stride is None else pair(stride, "stride", op, minimum=1)
    padding = pair(padding, "padding", op, minimum=0)
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size "
                         f"{kernel_size}")
    H, W = x.shape[2:]
    OH = pool_output_size(H, kernel_size[0], stride[0], padding[0], ceil_mode)
    OW = pool_output_size(W, kernel_size[1], stride[1], padding[1], ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: kernel {kernel_size[0]}x{kernel_size[1]} is larger than the "
                         f"padded input {H + 2 * padding[0]}x{W + 2 * padding[1]} "
                         f"(input {H}x{W}, padding {padding})")
    return kernel_size, stride, padding


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max over KH x KW windows of an NCHW batch (padding never wins: it is -inf).

    ``stride`` defaults to ``kernel_size``; ``padding`` is at most half the
    kernel. Output (N, C, OH, OW), sizes as in the module docstring.
    """
    kernel_size, stride, padding = _pool_arguments("max_pool2d", x, kernel_size, stride,
                                                   padding, ceil_mode)
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                           ceil_mode=bool(ceil_mode))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Mean over KH x KW windows of an NCHW batch.

    The divisor of a window counts the zero padding when ``count_include_pad``
    (but never the part of a ceil_mode window past the padded input), and
    only real input positions otherwise.
    """
    kernel_size, stride, padding = _pool_arguments("avg_pool2d", x, kernel_size, stride,
                                                   padding, ceil_mode)
    return AvgPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                           ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))


def adaptive_avg_pool2d(x, output_size):
    """Average-pool an NCHW batch to ``output_size`` (an int or a pair).

    Supported: output 1x1 (global average pooling, as at the end of
    GoogLeNet), and any size that divides the input (then it is avg_pool2d
    with kernel = stride = input / output).
    """
    op = "adaptive_avg_pool2d"
    check_ndim(x, 4, op, "NCHW")
    check_float(x, op)
    OH, OW = pair(output_size, "output_size", op, minimum=1)
    H, W = x.shape[2:]
    if (OH, OW) == (1, 1):
        return GlobalAvgPool2d.apply(x)
    if H % OH or W % OW:
        raise ValueError(f"{op}: output size {OH}x{OW} must divide the input size {H}x{W} "
                         f"(or be 1x1); other sizes are not supported")
    return avg_pool2d(x, (H // OH, W // OW))
