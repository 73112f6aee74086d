"""2-D max and average pooling over NCHW batches.

Notation: x is (N, C, H, W), the window is KH x KW, SH, SW the strides, PH,
PW the padding, y is (N, C, OH, OW). The output size, as in PyTorch, is

    OH = floor_or_ceil((H + 2*PH - KH) / SH) + 1      (ceil with ceil_mode)

and, with ceil_mode, one less if the last window would start past the input
and the left padding ((OH - 1)*SH >= H + PH). A ceil_mode window may hang
past the padded input: those positions hold -inf for max (they never win)
and 0 for average (the divisor leaves them out).

Both pools loop over the offsets of the window, never over pixels, and
both are separable (a window is KH rows of KW columns): they pool along W,
then along H, KW + KH passes, not KH*KW. Each pass runs on the padded input
as ONE flat array, every (HP, WP) plane after the other:

    r[j] = max over kw of flat[SW*j + kw]      j: (plane, row, column // SW)
    y[q] = max over kh of r[q + kh*R]          R = WP // SW values per row

so that tap k of every window at once is the flat array shifted by k (or
by k rows), a view. Windows that start near a row's or plane's end mix in
the next row: their results are garbage and cropped away (every SH-th row,
the first OW columns). What it buys is long loops: NumPy runs a strided
4-D view as one inner loop per row, W elements long (8 at GoogLeNet's 8x8
stages), and each pass over the flat array is about twice as fast.

Max pooling's backward sends each gy to its window's winner. The forward
records the winner as a one-byte tap number kh * KW + kw; backward turns it
into a flat index and scatter-adds gy there in one ``ufunc.at`` call (which
sums the gradients of overlapping windows that share a winner).

Planes are independent, so on the CPU both pools cut them into blocks that
tinygnet's threads run at once (``backend.parallel_for``), each block with
its own flat array.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, parallel_for
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


# Fewer input elements than this per block run as one block, on this thread: a
# hand-off to another thread costs about 0.1 to 0.5 ms here (a wake-up, then the
# GIL passed back and forth between NumPy calls). Thresholds of this module,
# conv's, batch norm's and backend's matmul were tuned together on GoogLeNet's
# training step at the demo's width.
_MIN_CHUNK_ELEMENTS = 1 << 17


def _flat_padded(planes, PH, PW, OH, OW, KH, KW, SH, SW, value):
    """Planes (P, H, W) padded for the windows, one after the other in one flat array.

    Returns (flat, HP, WP). The padded planes are (HP, WP): the input, PH/PW
    of ``value`` on each side, and whatever ceil_mode windows hang past the
    bottom/right; WP is rounded up to a multiple of SW, so that stepping SW
    elements at a time walks whole rows. A tail of ``value`` follows the last
    plane: the shifted views of the passes below read into it.
    """
    xp = get_array_module(planes)
    HP, WP = _padded_size(planes.shape[1:], PH, PW, OH, OW, KH, KW, SH, SW)
    P, H, W = planes.shape
    size = P * HP * WP
    flat = xp.full(size + (KH - 1) * WP + KW, value, dtype=planes.dtype)
    flat[:size].reshape(P, HP, WP)[:, PH:PH + H, PW:PW + W] = planes
    return flat, HP, WP


def _padded_size(input_size, PH, PW, OH, OW, KH, KW, SH, SW):
    H, W = input_size
    HP = max(H + 2 * PH, (OH - 1) * SH + KH)
    WP = max(W + 2 * PW, (OW - 1) * SW + KW)
    return HP, WP + (-WP % SW)


def _taps(a, starts, step, length):
    """Tap k of ``length`` windows is the strided view a[starts[k] :: step], ``length`` long."""
    return [a[s:s + step * (length - 1) + 1:step] for s in starts]


def _grid(planes, HP, WP, KH, SW):
    """Sizes of the two passes' grids. The row pass (along W) gives R = WP // SW
    values per padded row; the column pass needs KH - 1 rows of them past the
    last plane (its shifted views read there), so the row pass makes L + (KH - 1)*R."""
    R = WP // SW
    L = planes * HP * R
    return R, L, L + (KH - 1) * R


def _crop(grid, out, HP, R, SH):
    """Write the outputs (P, OH, OW) from the column pass's grid into ``out``:
    every SH-th row, the first OW columns."""
    P, OH, OW = out.shape
    out[...] = grid.reshape(P, HP, R)[:, :SH * (OH - 1) + 1:SH, :OW]


def _max_of(taps, argmax_dtype=None, inner_argmax_taps=None, inner_K=1):
    """Elementwise max over the taps and, if ``argmax_dtype`` is given, which tap won.

    The first of equal maxima wins, as in PyTorch. When the taps are
    themselves maxima whose winners are ``inner_argmax_taps`` (out of
    ``inner_K``), the winner is reported as k * inner_K + inner winner.
    """
    xp = get_array_module(taps[0])
    m = taps[0].copy()
    argmax = None
    if argmax_dtype is not None:
        argmax = (xp.zeros(m.shape, dtype=argmax_dtype) if inner_argmax_taps is None
                  else inner_argmax_taps[0].astype(argmax_dtype))
    for k in range(1, len(taps)):
        candidate = taps[k]
        if argmax is not None:
            # Only a strictly greater value takes over (ties keep the earlier tap), and
            # taps only grow with k, so the winner is a running maximum of
            # tap * (candidate > m): cheaper than where/copyto.
            tap = argmax.dtype.type(k * inner_K)
            if inner_argmax_taps is not None:
                tap = inner_argmax_taps[k] + tap
            xp.maximum(argmax, (candidate > m) * tap, out=argmax)
        xp.maximum(m, candidate, out=m)
    return m, argmax


def _sum_of(taps):
    s = taps[0].copy()
    for tap in taps[1:]:
        s += tap
    return s


def _add_to_taps(g, out, starts, step):
    """The adjoint of _sum_of: add g to every tap of ``out`` (overlapping windows add up)."""
    for view in _taps(out, starts, step, g.size):
        view += g
    return out


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
        planes = x.reshape(N * C, H, W)
        y = xp.empty((N * C, OH, OW), dtype=x.dtype)
        tap_dtype = np.min_scalar_type(KH * KW - 1) if need_grad else None
        tap = xp.empty((N * C, OH, OW), dtype=tap_dtype) if need_grad else None

        def pool(start, stop):   # planes start..stop (module docstring)
            flat, HP, WP = _flat_padded(planes[start:stop], PH, PW, OH, OW, KH, KW, SH, SW,
                                        value=-np.inf)
            R, L, L_rows = _grid(stop - start, HP, WP, KH, SW)
            # r[j] = max of flat[SW*j + kw]; then y[q] = max of r[q + kh*R]
            r, argmax_w = _max_of(_taps(flat, range(KW), SW, L_rows), tap_dtype)
            row_starts = range(0, KH * R, R)
            y_grid, tap_grid = _max_of(_taps(r, row_starts, 1, L), tap_dtype,
                                       _taps(argmax_w, row_starts, 1, L) if need_grad else None, KW)
            _crop(y_grid, y[start:stop], HP, R, SH)
            if need_grad:   # the winner, kh * KW + kw: a byte per output
                _crop(tap_grid, tap[start:stop], HP, R, SH)

        parallel_for(N * C, pool, min_chunk=_MIN_CHUNK_ELEMENTS // (H * W) + 1)
        if need_grad:
            self.tap = tap
            pad_shape = _padded_size((H, W), PH, PW, OH, OW, KH, KW, SH, SW)
            self.geometry = (x.shape, pad_shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return y.reshape(N, C, OH, OW)

    def backward(self, gy):
        x_shape, pad_shape, KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        if get_array_module(gy) is not np:   # GPU: a thread per input pixel gathers its gy
            return kernels.max_pool2d_backward(gy, self.argmax, x_shape, KH, KW, SH, SW, PH, PW,
                                               OH, OW)
        N, C, H, W = x_shape
        HP, WP = pad_shape
        gx_pad = np.zeros((N * C, HP * WP), dtype=gy.dtype)
        gy = gy.reshape(N * C, OH, OW)
        # Flat index in the padded planes of each output's winner: the offset of its
        # tap in the window (tap kh * KW + kw is kh rows and kw columns in), plus where
        # the window starts: plane, row, column (int32 while the planes are small
        # enough: half the bytes).
        index = np.int32 if N * C * HP * WP < 2 ** 31 else np.int64
        offsets = np.asarray([kh * WP + kw for kh in range(KH) for kw in range(KW)], dtype=index)

        def scatter(start, stop):
            winner = np.take(offsets, self.tap[start:stop])
            winner += np.arange(0, (stop - start) * HP * WP, HP * WP, dtype=index).reshape(-1, 1, 1)
            winner += np.arange(0, SH * OH * WP, SH * WP, dtype=index).reshape(-1, 1)
            winner += np.arange(0, SW * OW, SW, dtype=index)
            # One scatter-add: overlapping windows (stride < kernel) may share a winner.
            np.add.at(gx_pad[start:stop].reshape(-1), winner.reshape(-1),
                      gy[start:stop].reshape(-1))

        parallel_for(N * C, scatter, min_chunk=_MIN_CHUNK_ELEMENTS // (H * W) + 1)
        return gx_pad.reshape(N, C, HP, WP)[:, :, PH:PH + H, PW:PW + W]


class AvgPool2d(Function):
    """y[n, c, oh, ow] = sum of the window / divisor[oh, ow] (sum along W, then along H)."""

    def forward(self, x, kernel_size, stride, padding, ceil_mode, count_include_pad):
        xp = get_array_module(x)
        (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
        N, C, H, W = x.shape
        OH = pool_output_size(H, KH, SH, PH, ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, ceil_mode)
        planes = x.reshape(N * C, H, W)
        y = xp.empty((N * C, OH, OW), dtype=x.dtype)

        def pool(start, stop):   # planes start..stop: window sums (module docstring)
            flat, HP, WP = _flat_padded(planes[start:stop], PH, PW, OH, OW, KH, KW, SH, SW,
                                        value=0)
            R, L, L_rows = _grid(stop - start, HP, WP, KH, SW)
            r = _sum_of(_taps(flat, range(KW), SW, L_rows))              # row sums
            _crop(_sum_of(_taps(r, range(0, KH * R, R), 1, L)), y[start:stop], HP, R, SH)

        parallel_for(N * C, pool, min_chunk=_MIN_CHUNK_ELEMENTS // (H * W) + 1, xp=xp)
        rows = _divisors(H, KH, SH, PH, OH, count_include_pad)
        cols = _divisors(W, KW, SW, PW, OW, count_include_pad)
        divisor = xp.asarray(np.outer(rows, cols), dtype=x.dtype)  # (OH, OW)
        y /= divisor
        if self.needs_input_grad[0]:
            self.divisor = divisor
            self.geometry = (x.shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return y.reshape(N, C, OH, OW)

    def backward(self, gy):
        x_shape, KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        xp = get_array_module(gy)
        N, C, H, W = x_shape
        HP, WP = _padded_size((H, W), PH, PW, OH, OW, KH, KW, SH, SW)
        g = (gy / self.divisor).reshape(N * C, OH, OW)   # what each position of a window gets
        gx_pad = xp.empty((N * C, HP, WP), dtype=gy.dtype)

        def scatter(start, stop):   # the adjoint of forward's two passes, in reverse
            P = stop - start
            R, L, L_rows = _grid(P, HP, WP, KH, SW)
            g_grid = xp.zeros(L, dtype=gy.dtype)
            g_grid.reshape(P, HP, R)[:, :SH * (OH - 1) + 1:SH, :OW] = g[start:stop]
            g_rows = _add_to_taps(g_grid, xp.zeros(L_rows, dtype=gy.dtype), range(0, KH * R, R), 1)
            g_flat = _add_to_taps(g_rows, xp.zeros(P * HP * WP + (KH - 1) * WP + KW,
                                                   dtype=gy.dtype), range(KW), SW)
            # Copied out rather than accumulated in gx_pad itself: g_flat's tail runs into
            # the next block's planes, which another thread is writing.
            gx_pad[start:stop] = g_flat[:P * HP * WP].reshape(P, HP, WP)

        parallel_for(N * C, scatter, min_chunk=_MIN_CHUNK_ELEMENTS // (H * W) + 1, xp=xp)
        return gx_pad.reshape(N, C, HP, WP)[:, :, PH:PH + H, PW:PW + W]


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
