"""The fast CPU pooling: separable passes over flat arrays, on several threads.

The reference (``functional/pool.py``) loops over the KH*KW offsets of the
window. This fast path computes the same pooling with these changes:

* **Separable**: a window is KH rows of KW columns, so both pools pool along
  W, then along H: KW + KH passes, not KH*KW.
* **Flat passes**: each pass runs on the padded input as ONE flat array,
  every (HP, WP) plane after the other:

      r[j] = max over kw of flat[SW*j + kw]      j: (plane, row, column // SW)
      y[q] = max over kh of r[q + kh*R]          R = WP // SW values per row

  so that tap k of every window at once is the flat array shifted by k (or
  by k rows), a view. Windows that start near a row's or plane's end mix in
  the next row: their results are garbage and cropped away (every SH-th
  row, the first OW columns). What it buys is long loops: NumPy runs a
  strided 4-D view as one inner loop per row, W elements long (8 at
  GoogLeNet's 8x8 stages), and one loop over the flat array instead (the
  speed-up is in docs/performance.md).
* **Threads**: planes are independent, so both pools cut them into blocks
  that tinygnet's CPU threads run at once (``threads.parallel_for``), each
  block with its own flat array.

* **Centred windows, stride 1** (the Inception branches' 3x3/1 pools, whose
  output is the input's size): no padded copy and no crop. Tap d of a pass
  is the planes moved by d positions along the pass's axis, ONE flat copy,
  with the padding's value written where the move brought in another row's
  (or plane's) values: the same taps as the padded planes give, in the
  input's own layout, so the passes' results are the output.

Max pooling records the winner of each window as a one-byte tap number
kh * KW + kw; backward turns it into a flat index and scatter-adds gy there
in one ``np.add.at`` call (which sums the gradients of overlapping windows
that share a winner).
"""
from __future__ import annotations

import numpy as np

from ..dispatch import register_fast
from ..functional.pool import AvgPool2d, MaxPool2d, pool_output_size, window_sizes
from .moves import centred_stride_1, move
from .threads import parallel_for

__all__ = ["MaxPool2dFlatPasses", "AvgPool2dFlatPasses"]

# Fewer input elements than this per block run as one block, on the calling
# thread: smaller work is not worth the hand-off (tuned on GoogLeNet's
# training step; docs/performance.md).
MIN_BLOCK_ELEMENTS = 1 << 17


def _flat_padded(planes, PH, PW, OH, OW, KH, KW, SH, SW, value):
    """Planes (P, H, W) padded for the windows, one after the other in one flat array.

    Returns (flat, HP, WP). The padded planes are (HP, WP): the input, PH/PW
    of ``value`` on each side, and whatever ceil_mode windows hang past the
    bottom/right; WP is rounded up to a multiple of SW, so that stepping SW
    elements at a time walks whole rows. A tail of ``value`` follows the last
    plane: the shifted views of the passes below read into it.
    """
    HP, WP = _padded_size(planes.shape[1:], PH, PW, OH, OW, KH, KW, SH, SW)
    P, H, W = planes.shape
    size = P * HP * WP
    flat = np.full(size + (KH - 1) * WP + KW, value, dtype=planes.dtype)
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


def _max_of(taps, argmax_dtype=None, inner_argmax_taps=None, inner_K=1, out=(None, None)):
    """Elementwise max over the taps and, if ``argmax_dtype`` is given, which tap won.

    The first of equal maxima wins, as in PyTorch. When the taps are
    themselves maxima whose winners are ``inner_argmax_taps`` (out of
    ``inner_K``), the winner is reported as k * inner_K + inner winner.
    ``out``: arrays to write the max and the winners into (None: new ones).
    """
    out_max, out_argmax = out
    if len(taps) == 1:
        argmax = None if argmax_dtype is None else _into(
            out_argmax, np.zeros(taps[0].shape, argmax_dtype) if inner_argmax_taps is None
            else inner_argmax_taps[0].astype(argmax_dtype))
        return _into(out_max, taps[0].copy()), argmax
    # The first two taps in one pass each (no copy of the first to start from).
    argmax = None
    if argmax_dtype is not None:
        second_won = np.greater(taps[1], taps[0])        # strictly: a tie keeps tap 0
        if inner_argmax_taps is None:                    # tap 1's code is 1: the bools are it
            argmax = _into(out_argmax, second_won.astype(argmax_dtype, copy=False) if (
                np.dtype(argmax_dtype).itemsize != 1) else second_won.view(argmax_dtype))
        else:
            argmax = _into(out_argmax, inner_argmax_taps[0].astype(argmax_dtype))
            np.maximum(argmax, second_won * (inner_argmax_taps[1] + argmax.dtype.type(inner_K)),
                       out=argmax)
    m = np.maximum(taps[0], taps[1], out=out_max)
    for k in range(2, len(taps)):
        candidate = taps[k]
        if argmax is not None:
            # Only a strictly greater value takes over (ties keep the earlier tap), and
            # taps only grow with k, so the winner is a running maximum of
            # tap * (candidate > m): cheaper than where/copyto.
            tap = argmax.dtype.type(k * inner_K)
            if inner_argmax_taps is not None:
                tap = inner_argmax_taps[k] + tap
            np.maximum(argmax, (candidate > m) * tap, out=argmax)
        np.maximum(m, candidate, out=m)
    return m, argmax


def _into(out, a):
    """``a`` written into ``out``, or ``a`` itself when ``out`` is None."""
    if out is None:
        return a
    out[...] = a
    return out


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


def _max_pool_centred(planes, KH, KW, tap_dtype, y, tap):
    """Max pooling of ``planes`` (P, H, W) with centred KH x KW windows, stride 1, padding
    of -inf, written into ``y`` and (if ``tap_dtype``) the winning tap kh * KW + kw into
    ``tap``, both (P, H, W). The taps are the padded planes' (the same values, in the same
    order), so is every result."""
    def moved(a, dh, dw, value):          # a (P, H, W) moved: one row of moves.move
        if dh == dw == 0:
            return a
        out = np.empty_like(a)
        move(out[None], a[None], dh, dw, value)
        return out

    # r = max over kw of the planes moved by kw - KW//2 columns; then y over the rows
    r, argmax_w = _max_of([moved(planes, 0, kw - KW // 2, -np.inf) for kw in range(KW)],
                          tap_dtype)
    rows = range(-(KH // 2), KH // 2 + 1)
    _max_of([moved(r, d, 0, -np.inf) for d in rows], tap_dtype,
            None if tap_dtype is None else [moved(argmax_w, d, 0, 0) for d in rows], KW,
            out=(y, tap))


@register_fast(MaxPool2d, "cpu")
class MaxPool2dFlatPasses(MaxPool2d):
    """Replaces functional.pool.MaxPool2d on the CPU: KH + KW flat passes, not KH*KW, on threads.

    Max over each row of the window first (r, with the winning column), then
    over the rows (y, with the winning tap kh * KW + kw). Ties go to the first
    column, then the first row: the row-major first max, as in PyTorch.
    Backward scatters gy to the winners in one ``np.add.at`` call.
    """

    def forward(self, x, kernel_size, stride, padding, ceil_mode):
        (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
        N, C, H, W = x.shape
        OH = pool_output_size(H, KH, SH, PH, ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, ceil_mode)
        need_grad = self.needs_input_grad[0]
        planes = x.reshape(N * C, H, W)
        y = np.empty((N * C, OH, OW), dtype=x.dtype)
        tap_dtype = np.min_scalar_type(KH * KW - 1) if need_grad else None
        tap = np.empty((N * C, OH, OW), dtype=tap_dtype) if need_grad else None
        # Centred stride-1 windows skip the padded copy, but a padding tap could win a
        # window whose values are all -inf (or NaN): backward would then send gy outside
        # the plane. So only when every value is finite (one pass over x).
        centred = (centred_stride_1(KH, KW, SH, SW, PH, PW) and x.size > 0
                   and bool(np.isfinite(x.min())))

        def pool(start, stop):   # planes start..stop (module docstring)
            if centred:
                _max_pool_centred(planes[start:stop], KH, KW, tap_dtype, y[start:stop],
                                  tap[start:stop] if need_grad else None)
                return
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

        parallel_for(N * C, pool, min_chunk=MIN_BLOCK_ELEMENTS // (H * W) + 1)
        if need_grad:
            self.tap = tap
            # Backward's planes: padded, or for centred windows the input's own.
            pad_shape = (H, W) if centred else _padded_size((H, W), PH, PW, OH, OW, KH, KW,
                                                              SH, SW)
            self.geometry = (x.shape, pad_shape, KH, KW, SH, SW, PH, PW, OH, OW, centred)
        return y.reshape(N, C, OH, OW)

    def backward(self, gy):
        x_shape, pad_shape, KH, KW, SH, SW, PH, PW, OH, OW, centred = self.geometry
        N, C, H, W = x_shape
        HP, WP = pad_shape
        gx_pad = np.zeros((N * C, HP * WP), dtype=gy.dtype)
        gy = gy.reshape(N * C, OH, OW)
        # Flat index in the padded planes of each output's winner: the offset of its
        # tap in the window (tap kh * KW + kw is kh rows and kw columns in), plus where
        # the window starts: plane, row, column (int32 while the planes are small
        # enough: half the bytes). Centred windows (unpadded planes) start PH rows and
        # PW columns before their output's position.
        index = np.int32 if N * C * HP * WP < 2 ** 31 else np.int64
        start_offset = -(PH * WP + PW) if centred else 0
        offsets = np.asarray([kh * WP + kw + start_offset for kh in range(KH) for kw in range(KW)],
                             dtype=index)

        def scatter(start, stop):
            winner = np.take(offsets, self.tap[start:stop])
            if centred:     # output q's window starts (PH, PW) before input position q
                winner += np.arange(winner.size, dtype=index).reshape(winner.shape)
            else:
                winner += np.arange(0, (stop - start) * HP * WP, HP * WP,
                                    dtype=index).reshape(-1, 1, 1)
                winner += np.arange(0, SH * OH * WP, SH * WP, dtype=index).reshape(-1, 1)
                winner += np.arange(0, SW * OW, SW, dtype=index)
            # One scatter-add: overlapping windows (stride < kernel) may share a winner.
            np.add.at(gx_pad[start:stop].reshape(-1), winner.reshape(-1),
                      gy[start:stop].reshape(-1))

        parallel_for(N * C, scatter, min_chunk=MIN_BLOCK_ELEMENTS // (H * W) + 1)
        if centred:
            return gx_pad.reshape(N, C, H, W)
        return gx_pad.reshape(N, C, HP, WP)[:, :, PH:PH + H, PW:PW + W]


@register_fast(AvgPool2d, "cpu")
class AvgPool2dFlatPasses(AvgPool2d):
    """Replaces functional.pool.AvgPool2d on the CPU: KH + KW flat passes, not KH*KW, on threads.

    Sums along W, then along H; backward runs the adjoints of the two passes
    in reverse.
    """

    def forward(self, x, kernel_size, stride, padding, ceil_mode, count_include_pad):
        (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
        N, C, H, W = x.shape
        OH = pool_output_size(H, KH, SH, PH, ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, ceil_mode)
        planes = x.reshape(N * C, H, W)
        y = np.empty((N * C, OH, OW), dtype=x.dtype)

        def pool(start, stop):   # planes start..stop: window sums (module docstring)
            flat, HP, WP = _flat_padded(planes[start:stop], PH, PW, OH, OW, KH, KW, SH, SW,
                                        value=0)
            R, L, L_rows = _grid(stop - start, HP, WP, KH, SW)
            r = _sum_of(_taps(flat, range(KW), SW, L_rows))              # row sums
            _crop(_sum_of(_taps(r, range(0, KH * R, R), 1, L)), y[start:stop], HP, R, SH)

        parallel_for(N * C, pool, min_chunk=MIN_BLOCK_ELEMENTS // (H * W) + 1)
        divisor = np.asarray(window_sizes(H, W, kernel_size, stride, padding, (OH, OW),
                                          count_include_pad), dtype=x.dtype)   # (OH, OW)
        y /= divisor
        if self.needs_input_grad[0]:
            self.divisor = divisor
            self.geometry = (x.shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return y.reshape(N, C, OH, OW)

    def backward(self, gy):
        x_shape, KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        N, C, H, W = x_shape
        HP, WP = _padded_size((H, W), PH, PW, OH, OW, KH, KW, SH, SW)
        g = (gy / self.divisor).reshape(N * C, OH, OW)   # what each position of a window gets
        gx_pad = np.empty((N * C, HP, WP), dtype=gy.dtype)

        def scatter(start, stop):   # the adjoint of forward's two passes, in reverse
            P = stop - start
            R, L, L_rows = _grid(P, HP, WP, KH, SW)
            g_grid = np.zeros(L, dtype=gy.dtype)
            g_grid.reshape(P, HP, R)[:, :SH * (OH - 1) + 1:SH, :OW] = g[start:stop]
            g_rows = _add_to_taps(g_grid, np.zeros(L_rows, dtype=gy.dtype), range(0, KH * R, R), 1)
            g_flat = _add_to_taps(g_rows, np.zeros(P * HP * WP + (KH - 1) * WP + KW,
                                                   dtype=gy.dtype), range(KW), SW)
            # Copied out rather than accumulated in gx_pad itself: g_flat's tail runs into
            # the next block's planes, which another thread is writing.
            gx_pad[start:stop] = g_flat[:P * HP * WP].reshape(P, HP, WP)

        parallel_for(N * C, scatter, min_chunk=MIN_BLOCK_ELEMENTS // (H * W) + 1)
        return gx_pad.reshape(N, C, HP, WP)[:, :, PH:PH + H, PW:PW + W]
