"""2-D convolution: im2col through a strided view, then GEMM.

Notation: input x is (N, C, H, W), weight W is (O, C, KH, KW), output y is
(N, O, OH, OW); SH, SW are the strides and PH, PW the zero paddings, and

    OH = (H + 2*PH - KH) // SH + 1,    OW = (W + 2*PW - KW) // SW + 1.

im2col: every output pixel sees a KH x KW patch of each channel. A strided
view of the padded input lays those patches out as cols, of shape
(N, C*KH*KW, OH*OW), without moving any data; one copy makes it contiguous.
Then for each image n, y[n] = W(O, C*KH*KW) @ cols[n] (C*KH*KW, OH*OW).

Two layouts of cols, by kernel size:

* 1x1, stride 1, no padding (most of GoogLeNet): cols is x itself, seen as
  (N, C, H*W), no copy; one batched matmul (a BLAS GEMM per image) writes y
  straight into NCHW order.
* KH x KW (CPU): cols is laid out (C*KH*KW, N*OH*OW), all the images side by
  side, so y = W @ cols and gW = gy @ cols^T are each ONE large GEMM instead
  of N small ones (and no (N, O, C*KH*KW) stack of per-image gW to sum). It
  costs transposing y and gy between (N, O, ...) and (O, N, ...), arrays
  KH*KW*C/O times smaller than cols. Measured on GoogLeNet's CIFAR shapes
  (batch 128, 16, 8 and 4 pixels, 1 thread), forward + backward of a 3x3 or
  5x5 conv is 2-30% faster than the per-image layout (most at 8 and 4
  pixels), a whole training step about 10%. (The GPU path keeps the
  per-image layout: its im2col is a kernel.)

On the CPU the GEMMs run on tinygnet's threads (``backend.parallel_matmul``)
and the copies of im2col and col2im too, each thread taking a block of
channels (``backend.parallel_for``). The big temporaries (cols, the padded
input, gcols, the transposed y and gy) live in workspaces that every call
reuses (``backend.workspace``): fresh arrays that size cost a page fault per
page, which made a width-1 training step about 10% slower.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, parallel_for, parallel_matmul, workspace
from ..cuda import kernels
from ..tensor import Function
from ._checks import check_float, check_ndim, pair

__all__ = ["Conv2d", "conv2d"]

# The copies of im2col and col2im are cut into blocks of channels for the CPU
# threads, each with at least this many elements (smaller work is not worth the
# hand-off; see pool.py).
_MIN_CHUNK_ELEMENTS = 1 << 18


def _windows(x_pad, KH, KW, SH, SW, OH, OW):
    """A (N, C, KH, KW, OH, OW) view of x_pad, no copy:
    windows[n, c, kh, kw, oh, ow] = x_pad[n, c, oh*SH + kh, ow*SW + kw]."""
    xp = get_array_module(x_pad)
    sN, sC, sH, sW = x_pad.strides
    N, C = x_pad.shape[:2]
    return xp.lib.stride_tricks.as_strided(
        x_pad, shape=(N, C, KH, KW, OH, OW), strides=(sN, sC, sH, sW, sH * SH, sW * SW))



def _im2col_batch(x, KH, KW, SH, SW, PH, PW, OH, OW):
    """cols (C*KH*KW, N*OH*OW), all images side by side:
    cols[(c, kh, kw), (n, oh, ow)] = x_pad[n, c, oh*SH + kh, ow*SW + kw].
    Channels are independent rows of cols: the CPU threads copy a block each.
    cols is a workspace (``backend.workspace``): valid until the next im2col."""
    N, C, H, W = x.shape
    x_pad = workspace("conv.x_pad", (N, C, H + 2 * PH, W + 2 * PW), x.dtype) if (PH or PW) else x
    cols = workspace("conv.cols", (C, KH, KW, N, OH, OW), x.dtype)

    def copy(c0, c1):
        if PH or PW:   # zeros, then x copied in: about twice as fast as np.pad
            x_pad[:, c0:c1] = 0
            x_pad[:, c0:c1, PH:PH + H, PW:PW + W] = x[:, c0:c1]
        windows = _windows(x_pad[:, c0:c1], KH, KW, SH, SW, OH, OW)    # N, c, KH, KW, OH, OW
        cols[c0:c1] = windows.transpose(1, 2, 3, 0, 4, 5)

    parallel_for(C, copy, min_chunk=_MIN_CHUNK_ELEMENTS // (N * OH * OW * KH * KW) + 1)
    return cols.reshape(C * KH * KW, N * OH * OW)


def _col2im_batch(gcols, x_shape, KH, KW, SH, SW, PH, PW, OH, OW):
    """The adjoint of _im2col_batch: gx (N, C, H, W) from gcols (C*KH*KW, N*OH*OW)."""
    N, C, H, W = x_shape
    gcols = gcols.reshape(C, KH, KW, N, OH, OW)
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

    parallel_for(C, add_patches, min_chunk=_MIN_CHUNK_ELEMENTS // (N * OH * OW * KH * KW) + 1)
    return gx


def _swap_leading_axes(a, out=None):
    """(A, B, L) -> (B, A, L) as a contiguous array (into ``out`` if given):
    (O, N, ...) <-> (N, O, ...). Each thread copies a block of the new leading axis."""
    A, B, L = a.shape
    if out is None:
        out = np.empty((B, A, L), dtype=a.dtype)

    def copy(b0, b1):
        out[b0:b1] = a[:, b0:b1].transpose(1, 0, 2)

    parallel_for(B, copy, min_chunk=_MIN_CHUNK_ELEMENTS // (A * L) + 1)
    return out


class Conv2d(Function):
    """y[n, o, oh, ow] = b[o] + sum over c, kh, kw of
    W[o, c, kh, kw] * x_pad[n, c, oh*SH + kh, ow*SW + kw]."""

    def forward(self, x, W, b=None, stride=(1, 1), padding=(0, 0)):
        xp = get_array_module(x)
        N = x.shape[0]
        O, C, KH, KW = W.shape
        (SH, SW), (PH, PW) = stride, padding
        OH = (x.shape[2] + 2 * PH - KH) // SH + 1
        OW = (x.shape[3] + 2 * PW - KW) // SW + 1
        # CPU and a real KH x KW window: the whole batch in one GEMM (module docstring).
        self.one_gemm = xp is np and (KH, KW, SH, SW, PH, PW) != (1, 1, 1, 1, 0, 0)
        if self.one_gemm:
            cols = _im2col_batch(x, KH, KW, SH, SW, PH, PW, OH, OW)  # (C*KH*KW, N*OH*OW)
            y = parallel_matmul(W.reshape(O, -1), cols,
                                out=workspace("conv.y", (O, N * OH * OW), x.dtype))
            y = _swap_leading_axes(y.reshape(O, N, OH * OW))         # (N, O, OH*OW), new
        else:
            cols = self._im2col(x, KH, KW, SH, SW, PH, PW, OH, OW)  # (N, C*KH*KW, OH*OW)
            y = parallel_matmul(W.reshape(O, -1), cols)              # (N, O, OH*OW)
        if b is not None:
            y += b.reshape(O, 1)
        need_gx, need_gW = self.needs_input_grad[:2]
        # gW needs cols: we keep x and rebuild them in backward. That costs one copy
        # (~10% of a 3x3 conv's time); keeping cols would cost KH*KW times the memory
        # of x for every conv of the network. gx needs the weight.
        self.x = x if need_gW else None
        self.W = W if need_gx else None
        self.x_shape, self.geometry = x.shape, (KH, KW, SH, SW, PH, PW, OH, OW)
        return y.reshape(N, O, OH, OW)

    @staticmethod
    def _im2col(x, KH, KW, SH, SW, PH, PW, OH, OW):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        if (KH, KW, SH, SW, PH, PW) == (1, 1, 1, 1, 0, 0):
            return x.reshape(N, C, H * W)          # a 1x1 convolution is a plain GEMM
        if xp is not np:                           # GPU: one kernel, padding read as zeros
            return kernels.im2col(x, KH, KW, SH, SW, PH, PW, OH, OW)
        if PH or PW:
            x = xp.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))
        cols = xp.ascontiguousarray(_windows(x, KH, KW, SH, SW, OH, OW))
        return cols.reshape(N, C * KH * KW, OH * OW)

    def backward(self, gy):
        xp = get_array_module(gy)
        KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        N, O = gy.shape[:2]
        gy = gy.reshape(N, O, OH * OW)
        need_gx, need_gW, need_gb = self.needs_input_grad
        gx = gW = gb = None
        if self.one_gemm:
            gb = gy.sum(axis=(0, 2)) if need_gb else None
            gy = _swap_leading_axes(gy, out=workspace("conv.gy", (O, N, OH * OW), gy.dtype))
            gy = gy.reshape(O, -1)                                   # (O, N*OH*OW)
            if need_gW:
                cols = _im2col_batch(self.x, KH, KW, SH, SW, PH, PW, OH, OW)
                gW = parallel_matmul(gy, cols.T).reshape(O, -1, KH, KW)
            if need_gx:
                W2 = self.W.reshape(O, -1)                           # (O, C*KH*KW)
                gcols = parallel_matmul(W2.T, gy, out=workspace(      # (C*KH*KW, N*OH*OW)
                    "conv.gcols", (W2.shape[1], gy.shape[1]), gy.dtype))
                gx = _col2im_batch(gcols, self.x_shape, KH, KW, SH, SW, PH, PW, OH, OW)
            return gx, gW, gb
        if need_gW:
            cols = self._im2col(self.x, KH, KW, SH, SW, PH, PW, OH, OW)
            # sum over n of gy[n] (O, OH*OW) @ cols[n].T (OH*OW, C*KH*KW)
            gW = parallel_matmul(gy, cols.transpose(0, 2, 1)).sum(axis=0)
            gW = gW.reshape(O, -1, KH, KW)
        if need_gb:
            gb = gy.sum(axis=(0, 2))
        if need_gx:
            gcols = parallel_matmul(self.W.reshape(O, -1).T, gy)  # (N, C*KH*KW, OH*OW)
            gx = self._col2im(gcols, self.x_shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return gx, gW, gb

    @staticmethod
    def _col2im(gcols, x_shape, KH, KW, SH, SW, PH, PW, OH, OW):
        """The adjoint of im2col: add each patch gradient back where the patch came from."""
        xp = get_array_module(gcols)
        N, C, H, W = x_shape
        if (KH, KW, SH, SW, PH, PW) == (1, 1, 1, 1, 0, 0):
            return gcols.reshape(N, C, H, W)
        if xp is not np:                           # GPU: one kernel, one thread per pixel
            return kernels.col2im(gcols, x_shape, KH, KW, SH, SW, PH, PW, OH, OW)
        gcols = gcols.reshape(N, C, KH, KW, OH, OW)
        gx_pad = xp.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=gcols.dtype)
        # One strided slice add per kernel offset (overlapping patches accumulate).
        for kh in range(KH):
            for kw in range(KW):
                gx_pad[:, :, kh:kh + SH * OH:SH, kw:kw + SW * OW:SW] += gcols[:, :, kh, kw]
        return gx_pad[:, :, PH:PH + H, PW:PW + W]


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as in PyTorch) of an NCHW batch.

    Args:
        x: input of shape (N, C, H, W), float32 or float64.
        weight: (O, C, KH, KW), same dtype as x.
        bias: (O,) or None.
        stride: SH, SW (an int or a pair), each >= 1.
        padding: PH, PW zeros added on both sides (an int or a pair), each >= 0.

    Returns:
        y of shape (N, O, OH, OW) with OH = (H + 2*PH - KH) // SH + 1 and
        OW = (W + 2*PW - KW) // SW + 1.
    """
    op = "conv2d"
    check_ndim(x, 4, op, "NCHW")
    check_float(x, op)
    if weight.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D weight (O, C, KH, KW), "
                         f"got shape {tuple(weight.shape)}")
    check_float(weight, op, "weight")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: input is {x.dtype} but weight is {weight.dtype}; "
                        f"convert one with .to(dtype=...)")
    stride = pair(stride, "stride", op, minimum=1)
    padding = pair(padding, "padding", op, minimum=0)
    N, C, H, W = x.shape
    O, C_w, KH, KW = weight.shape
    if C != C_w:
        raise ValueError(f"{op}: input has {C} channels (shape {tuple(x.shape)}) but weight "
                         f"expects {C_w} (shape {tuple(weight.shape)})")
    if KH > H + 2 * padding[0] or KW > W + 2 * padding[1]:
        raise ValueError(f"{op}: kernel {KH}x{KW} is larger than the padded input "
                         f"{H + 2 * padding[0]}x{W + 2 * padding[1]} "
                         f"(input {H}x{W}, padding {padding})")
    if bias is not None:
        if tuple(bias.shape) != (O,):
            raise ValueError(f"{op}: bias must have shape ({O},) for {O} output channels, "
                             f"got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: input is {x.dtype} but bias is {bias.dtype}")
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding)
