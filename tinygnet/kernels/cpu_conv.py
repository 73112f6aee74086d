"""The fast CPU convolution: one GEMM over the whole batch, on several threads.

The reference (``functional/conv.py``) does im2col and one matrix product per
image. This fast path computes the same convolution with these changes:

* **One GEMM for the batch** (KH x KW kernels): cols is laid out
  (C*KH*KW, N*OH*OW), all the images side by side, so y = W2 @ cols and
  gW2 = gy @ cols^T are each ONE large GEMM instead of N small ones (and no
  (N, O, C*KH*KW) stack of per-image gW to sum). It costs transposing y and
  gy between (N, O, ...) and (O, N, ...), arrays KH*KW*C/O times smaller
  than cols. A 1x1 convolution with stride 1 and no padding needs no
  im2col at all: cols is x itself seen as (N, C, H*W), and one batched
  matmul writes y straight into NCHW order.
* **Threads**: the GEMMs are cut into blocks for tinygnet's CPU threads
  (``threads.parallel_matmul``), and so are the copies of im2col and col2im,
  each thread taking a block of channels (``threads.parallel_for``).
* **Reused memory**: the big temporaries (cols, the padded input, gcols,
  the transposed y and gy) live in workspaces that every call reuses
  (``workspaces.workspace``): fresh arrays that size cost a page fault per
  page.
* **Columns kept for backward**: the weight gradient needs cols again. They
  are kept from forward in memory lent by ``workspaces.lend`` (the same
  memory every step) while a budget allows; past it, backward rebuilds
  them from x, so the saved state stays the size of x, not KH*KW times it.
* **Centred stride-1 kernels** (GoogLeNet's 3x3 and 5x5 in the Inception
  branches: the output is the input's size): row (kh, kw) of cols is x moved
  by (kh - PH, kw - PW), so im2col builds it with ONE flat copy of x (in
  (C, N*H*W) order) and writes zeros where the move left the plane, and
  col2im adds it back with one flat add, instead of strided copies and adds
  whose inner runs are rows of W values.

docs/performance.md has what each of these bought.
"""
from __future__ import annotations

import numpy as np

from ..dispatch import register_fast
from ..functional.conv import Conv2d, conv_output_size, is_pointwise
from .moves import add_moved_back, centred_stride_1, move
from .threads import parallel_for, parallel_matmul
from .workspaces import lend, workspace

__all__ = ["Conv2dOneGemm"]

# The copies of im2col and col2im are cut into blocks of channels for the
# threads, each with at least this many elements: smaller work is not worth
# the hand-off (tuned on GoogLeNet's training step; docs/performance.md).
MIN_BLOCK_ELEMENTS = 1 << 18


def _windows(x_pad, KH, KW, SH, SW, OH, OW):
    """A (N, C, KH, KW, OH, OW) view of x_pad, no copy:
    windows[n, c, kh, kw, oh, ow] = x_pad[n, c, oh*SH + kh, ow*SW + kw]."""
    sN, sC, sH, sW = x_pad.strides
    N, C = x_pad.shape[:2]
    return np.lib.stride_tricks.as_strided(
        x_pad, shape=(N, C, KH, KW, OH, OW), strides=(sN, sC, sH, sW, sH * SH, sW * SW))


def _im2col_batch(x, KH, KW, SH, SW, PH, PW, OH, OW, out=None):
    """cols (C*KH*KW, N*OH*OW), all images side by side:
    cols[(c, kh, kw), (n, oh, ow)] = x_pad[n, c, oh*SH + kh, ow*SW + kw].
    Channels are independent rows of cols: the threads copy a block each.
    Written into ``out`` (C, KH, KW, N, OH, OW) if given, else into a workspace,
    valid until the next im2col."""
    N, C, H, W = x.shape
    cols = out if out is not None else workspace("conv.cols", (C, KH, KW, N, OH, OW), x.dtype)
    if centred_stride_1(KH, KW, SH, SW, PH, PW):
        return _im2col_centred(x, KH, KW, cols)
    x_pad = workspace("conv.x_pad", (N, C, H + 2 * PH, W + 2 * PW), x.dtype) if (PH or PW) else x

    def copy(c0, c1):
        if PH or PW:   # zeros, then x copied in: no new array, unlike np.pad
            x_pad[:, c0:c1] = 0
            x_pad[:, c0:c1, PH:PH + H, PW:PW + W] = x[:, c0:c1]
        windows = _windows(x_pad[:, c0:c1], KH, KW, SH, SW, OH, OW)    # N, c, KH, KW, OH, OW
        cols[c0:c1] = windows.transpose(1, 2, 3, 0, 4, 5)

    parallel_for(C, copy, min_chunk=MIN_BLOCK_ELEMENTS // (N * OH * OW * KH * KW) + 1)
    return cols.reshape(C * KH * KW, N * OH * OW)


def _im2col_centred(x, KH, KW, cols):
    """_im2col_batch for centred stride-1 kernels, into ``cols`` (C, KH, KW, N, H, W): x
    once in (C, N, H, W) order, then row (kh, kw) of cols is that moved by
    (kh - KH//2, kw - KW//2), zeros off the plane: one flat copy each (``moves.move``)."""
    N, C, H, W = x.shape
    x_cn = workspace("conv.x_cn", (C, N, H, W), x.dtype)

    def copy(c0, c1):
        x_cn[c0:c1] = x[:, c0:c1].transpose(1, 0, 2, 3)
        for kh in range(KH):
            for kw in range(KW):
                move(cols[c0:c1, kh, kw], x_cn[c0:c1], kh - KH // 2, kw - KW // 2, 0)

    parallel_for(C, copy, min_chunk=MIN_BLOCK_ELEMENTS // (N * H * W * KH * KW) + 1)
    return cols.reshape(C * KH * KW, N * H * W)


def _col2im_batch(gcols, x_shape, KH, KW, SH, SW, PH, PW, OH, OW):
    """The adjoint of _im2col_batch: gx (N, C, H, W) from gcols (C*KH*KW, N*OH*OW)."""
    N, C, H, W = x_shape
    gcols = gcols.reshape(C, KH, KW, N, OH, OW)
    if centred_stride_1(KH, KW, SH, SW, PH, PW):
        return _col2im_centred(gcols, x_shape)
    # Accumulate in gcols' own (C, N, ...) order (long runs in memory), then one
    # transposing copy to NCHW; each thread takes a block of channels.
    gx_pad = workspace("conv.gx_pad", (C, N, H + 2 * PH, W + 2 * PW), gcols.dtype)
    gx = np.empty(x_shape, dtype=gcols.dtype)

    def add_patches(c0, c1):
        gx_pad[c0:c1] = 0
        for kh in range(KH):        # one strided add per kernel offset; overlaps add up
            for kw in range(KW):
                gx_pad[c0:c1, :, kh:kh + SH * OH:SH, kw:kw + SW * OW:SW] += gcols[c0:c1, kh, kw]
        gx[:, c0:c1] = gx_pad[c0:c1, :, PH:PH + H, PW:PW + W].transpose(1, 0, 2, 3)

    parallel_for(C, add_patches, min_chunk=MIN_BLOCK_ELEMENTS // (N * OH * OW * KH * KW) + 1)
    return gx


def _col2im_centred(gcols, x_shape):
    """_col2im_batch for centred stride-1 kernels, gcols (C, KH, KW, N, H, W) (overwritten):
    each row (kh, kw) added back into gx (C, N, H, W), its padding's entries dropped, one
    flat add each (``moves.add_moved_back``), in the order of _col2im_batch's strided adds:
    every sum is the same, bit for bit (a dropped entry adds 0.0 to a neighbour)."""
    N, C, H, W = x_shape
    KH, KW = gcols.shape[1:3]
    gx_cn = workspace("conv.gx_cn", (C, N, H, W), gcols.dtype)
    gx = np.empty(x_shape, dtype=gcols.dtype)

    def add_rows(c0, c1):
        gx_cn[c0:c1] = 0
        for kh in range(KH):
            for kw in range(KW):
                add_moved_back(gx_cn[c0:c1], gcols[c0:c1, kh, kw], kh - KH // 2, kw - KW // 2)
        gx[:, c0:c1] = gx_cn[c0:c1].transpose(1, 0, 2, 3)

    parallel_for(C, add_rows, min_chunk=MIN_BLOCK_ELEMENTS // (N * H * W * KH * KW) + 1)
    return gx


def _swap_leading_axes(a, out=None):
    """(A, B, L) -> (B, A, L) as a contiguous array (into ``out`` if given):
    (O, N, ...) <-> (N, O, ...). Each thread copies a block of the new leading axis."""
    A, B, L = a.shape
    if out is None:
        out = np.empty((B, A, L), dtype=a.dtype)

    def copy(b0, b1):
        out[b0:b1] = a[:, b0:b1].transpose(1, 0, 2)

    parallel_for(B, copy, min_chunk=MIN_BLOCK_ELEMENTS // (A * L) + 1)
    return out


@register_fast(Conv2d, "cpu")
class Conv2dOneGemm(Conv2d):
    """Replaces functional.conv.Conv2d on the CPU: one GEMM a batch, threads, columns reused/kept."""

    def forward(self, x, W, b=None, stride=(1, 1), padding=(0, 0)):
        N, C, H, W_in = x.shape
        O, _, KH, KW = W.shape
        (SH, SW), (PH, PW) = stride, padding
        OH, OW = conv_output_size(H, KH, SH, PH), conv_output_size(W_in, KW, SW, PW)
        need_gx, need_gW = self.needs_input_grad[:2]
        self.cols = self.cols_loan = None   # cols kept for gW, when memory is lent for them
        if is_pointwise(KH, KW, SH, SW, PH, PW):
            y = parallel_matmul(W.reshape(O, C), x.reshape(N, C, H * W_in))  # N, O, H*W
        else:
            loan = lend((C, KH, KW, N, OH, OW), x.dtype) if need_gW else None
            cols = _im2col_batch(x, KH, KW, SH, SW, PH, PW, OH, OW,          # C*KH*KW, N*OH*OW
                                 out=loan.array if loan is not None else None)
            y = parallel_matmul(W.reshape(O, -1), cols,
                                out=workspace("conv.y", (O, N * OH * OW), x.dtype))
            y = _swap_leading_axes(y.reshape(O, N, OH * OW))         # N, O, OH*OW, new
            if loan is not None:          # held until this op is released after backward
                self.cols, self.cols_loan = cols, loan
        if b is not None:
            y += b.reshape(O, 1)
        self.x = x if need_gW and self.cols is None else None   # else cols are rebuilt from x
        self.W = W if need_gx else None
        self.x_shape, self.geometry = x.shape, (KH, KW, SH, SW, PH, PW, OH, OW)
        return y.reshape(N, O, OH, OW)

    def backward(self, gy):
        KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        N, O = gy.shape[:2]
        gy = gy.reshape(N, O, OH * OW)
        need_gx, need_gW, need_gb = self.needs_input_grad
        gx = gW = gb = None
        if is_pointwise(KH, KW, SH, SW, PH, PW):
            C = self.x_shape[1]
            if need_gW:   # sum over n of gy[n] (O, H*W) @ x[n].T (H*W, C)
                x = self.x.reshape(N, C, OH * OW)
                gW = parallel_matmul(gy, x.transpose(0, 2, 1)).sum(axis=0).reshape(O, C, 1, 1)
            if need_gb:
                gb = gy.sum(axis=(0, 2))
            if need_gx:
                gx = parallel_matmul(self.W.reshape(O, C).T, gy).reshape(self.x_shape)
            return gx, gW, gb
        gb = gy.sum(axis=(0, 2)) if need_gb else None
        gy = _swap_leading_axes(gy, out=workspace("conv.gy", (O, N, OH * OW), gy.dtype))
        gy = gy.reshape(O, -1)                                       # O, N*OH*OW
        if need_gW:
            cols = (self.cols if self.cols is not None else
                    _im2col_batch(self.x, KH, KW, SH, SW, PH, PW, OH, OW))
            gW = parallel_matmul(gy, cols.T).reshape(O, -1, KH, KW)
        if need_gx:
            W2 = self.W.reshape(O, -1)                               # O, C*KH*KW
            gcols = parallel_matmul(W2.T, gy, out=workspace(         # C*KH*KW, N*OH*OW
                "conv.gcols", (W2.shape[1], gy.shape[1]), gy.dtype))
            gx = _col2im_batch(gcols, self.x_shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return gx, gW, gb
