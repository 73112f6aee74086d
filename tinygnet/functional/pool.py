"""2-D max and average pooling over NCHW batches.

Notation: x is (N, C, H, W), the window is KH x KW, SH, SW the strides, PH,
PW the padding, y is (N, C, OH, OW). The output size, as in PyTorch, is

    OH = floor_or_ceil((H + 2*PH - KH) / SH) + 1      (ceil with ceil_mode)

and, with ceil_mode, one less if the last window would start past the input
and the left padding ((OH - 1)*SH >= H + PH). A ceil_mode window may hang
past the padded input: those positions hold -inf for max (they never win)
and 0 for average (the divisor leaves them out).

Both pools loop over the offsets of the window, never over pixels: tap k
of every window at once is a strided view such as x_pad[:, :, :, k::SW]
cut to OW columns. And both are separable (a window is KH rows of KW
columns), so they pool along W, then along H: KH + KW passes, not KH*KW.

Max pooling's backward sends each gy to its window's winner. The forward
records the winner as a one-byte tap number kh * KW + kw; backward turns it
into a flat index and scatter-adds gy there in one ``ufunc.at`` call (which
sums the gradients of overlapping windows that share a winner).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..cuda import kernels
from ..tensor import Function
from ._checks import check_float, check_ndim, pair

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
           "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


def pool_output_size(size, kernel, stride, padding, ceil_mode):
    """OH from H (or OW from W), exactly as PyTorch's pooling_output_shape."""
    span = size + 2 * padding - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1   # the last window must start inside the input or the left padding
    return out


def _pad_for_windows(x, PH, PW, OH, OW, KH, KW, SH, SW, value):
    """x padded by PH, PW, plus whatever the ceil_mode windows hang past the bottom/right."""
    xp = get_array_module(x)
    H, W = x.shape[2:]
    extra_h = max(0, (OH - 1) * SH + KH - (H + 2 * PH))
    extra_w = max(0, (OW - 1) * SW + KW - (W + 2 * PW))
    if PH == PW == extra_h == extra_w == 0:
        return x
    # Fill, then copy x in: about twice as fast as xp.pad, which is general-purpose.
    N, C = x.shape[:2]
    x_pad = xp.full((N, C, H + 2 * PH + extra_h, W + 2 * PW + extra_w), value, dtype=x.dtype)
    x_pad[:, :, PH:PH + H, PW:PW + W] = x
    return x_pad


def _tap(a, axis, k, S, O):
    """Tap k of all O windows along ``axis`` (2: rows, 3: columns), a strided view:
    the elements a[..., k + S*o, ...] for o = 0 .. O-1."""
    index = [slice(None)] * 4
    index[axis] = slice(k, k + S * (O - 1) + 1, S)
    return a[tuple(index)]


def _max_along(a, axis, K, S, O, with_argmax, inner_argmax=None, inner_K=1):
    """Max over K taps along ``axis`` and (if asked) which tap won, as a small int.

    The first of equal maxima wins, as in PyTorch. When ``a`` is itself a max
    along W whose winners are ``inner_argmax`` (out of ``inner_K``), the winner
    is reported as the window's tap k * inner_K + inner winner.
    """
    xp = get_array_module(a)
    m = _tap(a, axis, 0, S, O).copy()
    argmax = None
    if with_argmax:
        dtype = np.min_scalar_type(K * inner_K - 1)
        argmax = (xp.zeros(m.shape, dtype=dtype) if inner_argmax is None
                  else _tap(inner_argmax, axis, 0, S, O).astype(dtype))
    for k in range(1, K):
        candidate = _tap(a, axis, k, S, O)
        if with_argmax:
            # Only a strictly greater value takes over (ties keep the earlier tap), and
            # taps only grow with k, so the winner is a running maximum of
            # tap * (candidate > m): cheaper than where/copyto.
            tap = argmax.dtype.type(k * inner_K)
            if inner_argmax is not None:
                tap = _tap(inner_argmax, axis, k, S, O) + tap
            xp.maximum(argmax, (candidate > m) * tap, out=argmax)
        xp.maximum(m, candidate, out=m)
    return m, argmax


def _sum_along(a, axis, K, S, O):
    s = _tap(a, axis, 0, S, O).copy()
    for k in range(1, K):
        s += _tap(a, axis, k, S, O)
    return s


def _scatter_along(g, axis, K, S, O, in_shape):
    """The adjoint of _sum_along: send g back to every tap."""
    xp = get_array_module(g)
    g_in = xp.zeros(in_shape, dtype=g.dtype)
    for k in range(K):
        view = _tap(g_in, axis, k, S, O)
        view += g                                            # overlapping windows add up
    return g_in


class MaxPool2d(Function):
    """y[n, c, oh, ow] = max of the window; the gradient goes to the (first) max.

    Max over each row of the window first (r, with the winning column), then
    over the rows (y, with the winning tap kh * KW + kw). Ties go to the first
    column, then the first row: the row-major first max, as in PyTorch.
    """

    def forward(self, x, kernel_size, stride, padding, ceil_mode):
        xp = get_array_module(x)
        (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
        N, C, H, W = x.shape
        OH = pool_output_size(H, KH, SH, PH, ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, ceil_mode)
        need_grad = self.needs_input_grad[0]
        if xp is not np:   # GPU: one kernel, a thread per output; argmax = h * W + w of the max
            y, argmax = kernels.max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, OH, OW)
            if need_grad:
                self.argmax, self.geometry = argmax, (x.shape, None, KH, KW, SH, SW, PH, PW, OH, OW)
            return y
        x_pad = _pad_for_windows(x, PH, PW, OH, OW, KH, KW, SH, SW, value=-xp.inf)
        r, argmax_w = _max_along(x_pad, 3, KW, SW, OW, need_grad)   # (N, C, H + pad, OW)
        y, tap = _max_along(r, 2, KH, SH, OH, need_grad, argmax_w, KW)  # (N, C, OH, OW)
        if need_grad:
            self.tap = tap                    # the winner, kh * KW + kw, one byte per output
            self.geometry = (x.shape, x_pad.shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return y

    def backward(self, gy):
        x_shape, pad_shape, KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        if get_array_module(gy) is not np:   # GPU: a thread per input pixel gathers its gy
            return kernels.max_pool2d_backward(gy, self.argmax, x_shape, KH, KW, SH, SW, PH, PW,
                                               OH, OW)
        xp = get_array_module(gy)
        N, C, H, W = x_shape
        HP, WP = pad_shape[2:]
        # Flat index in x_pad of each output's winner: the offset of its tap in the
        # window (tap kh * KW + kw is kh rows and kw columns in), plus where the window
        # starts: plane, row, column (int32 while x_pad is small enough: half the bytes).
        index = np.int32 if N * C * HP * WP < 2 ** 31 else np.int64
        offsets = xp.asarray([kh * WP + kw for kh in range(KH) for kw in range(KW)], dtype=index)
        winner = offsets[self.tap].reshape(N * C, OH, OW)
        winner += xp.arange(0, N * C * HP * WP, HP * WP, dtype=index).reshape(-1, 1, 1)
        winner += xp.arange(0, SH * OH * WP, SH * WP, dtype=index).reshape(-1, 1)
        winner += xp.arange(0, SW * OW, SW, dtype=index)
        # One scatter-add: overlapping windows (stride < kernel) may share a winner.
        gx_pad = xp.zeros(N * C * HP * WP, dtype=gy.dtype)
        xp.add.at(gx_pad, winner.reshape(-1), gy.reshape(-1))
        return gx_pad.reshape(pad_shape)[:, :, PH:PH + H, PW:PW + W]


class AvgPool2d(Function):
    """y[n, c, oh, ow] = sum of the window / divisor[oh, ow] (sum along W, then along H)."""

    def forward(self, x, kernel_size, stride, padding, ceil_mode, count_include_pad):
        xp = get_array_module(x)
        (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
        N, C, H, W = x.shape
        OH = pool_output_size(H, KH, SH, PH, ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, ceil_mode)
        x_pad = _pad_for_windows(x, PH, PW, OH, OW, KH, KW, SH, SW, value=0)
        r = _sum_along(x_pad, 3, KW, SW, OW)                      # (N, C, H + pad, OW)
        y = _sum_along(r, 2, KH, SH, OH)                          # (N, C, OH, OW)
        rows = _divisors(H, KH, SH, PH, OH, count_include_pad)
        cols = _divisors(W, KW, SW, PW, OW, count_include_pad)
        divisor = xp.asarray(np.outer(rows, cols), dtype=x.dtype)  # (OH, OW)
        y /= divisor
        if self.needs_input_grad[0]:
            self.divisor = divisor
            self.geometry = (x.shape, x_pad.shape, r.shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return y

    def backward(self, gy):
        x_shape, pad_shape, r_shape, KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        H, W = x_shape[2:]
        g = gy / self.divisor                 # what each position of a window receives
        gr = _scatter_along(g, 2, KH, SH, OH, r_shape)
        gx_pad = _scatter_along(gr, 3, KW, SW, OW, pad_shape)
        return gx_pad[:, :, PH:PH + H, PW:PW + W]


def _divisors(size, kernel, stride, padding, out, count_include_pad):
    """Per output row (or column), how many positions its window averages over.

    As PyTorch's kernel: the window [start, end) is clipped to the padded input
    (end <= size + padding); without count_include_pad, clipped to the input.
    """
    start = np.arange(out) * stride - padding
    end = np.minimum(start + kernel, size + padding)
    if not count_include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return end - start


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
