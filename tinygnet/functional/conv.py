"""2-D convolution: im2col through a strided view, then one batched GEMM.

Notation: input x is (N, C, H, W), weight W is (O, C, KH, KW), output y is
(N, O, OH, OW); SH, SW are the strides and PH, PW the zero paddings, and

    OH = (H + 2*PH - KH) // SH + 1,    OW = (W + 2*PW - KW) // SW + 1.

im2col: every output pixel sees a KH x KW patch of each channel. A strided
view of the padded input lays those patches out as cols, of shape
(N, C*KH*KW, OH*OW), without moving any data; one copy makes it contiguous.
Then for each image n, y[n] = W(O, C*KH*KW) @ cols[n] (C*KH*KW, OH*OW).

The layout trick: cols keeps the batch axis first, so one batched matmul
(BLAS GEMM per image, all inside NumPy) writes y straight into NCHW order.
Measured on 2 cores against one big GEMM W @ cols(C*KH*KW, N*OH*OW), which
needs the input transposed to (C, N, ...) and the output transposed back, it
is as fast or faster and needs no transposes at all. For a 1x1 convolution
with stride 1 and no padding, cols is x itself seen as (N, C, H*W): no copy.
"""
from __future__ import annotations

from ..backend import get_array_module
from ..tensor import Function
from ._checks import check_float, check_ndim, pair

__all__ = ["Conv2d", "conv2d"]


def _windows(x_pad, KH, KW, SH, SW, OH, OW):
    """A (N, C, KH, KW, OH, OW) view of x_pad, no copy:
    windows[n, c, kh, kw, oh, ow] = x_pad[n, c, oh*SH + kh, ow*SW + kw]."""
    xp = get_array_module(x_pad)
    sN, sC, sH, sW = x_pad.strides
    N, C = x_pad.shape[:2]
    return xp.lib.stride_tricks.as_strided(
        x_pad, shape=(N, C, KH, KW, OH, OW), strides=(sN, sC, sH, sW, sH * SH, sW * SW))


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
        cols = self._im2col(x, KH, KW, SH, SW, PH, PW, OH, OW)  # (N, C*KH*KW, OH*OW)
        y = xp.matmul(W.reshape(O, -1), cols)                    # (N, O, OH*OW)
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
        if need_gW:
            cols = self._im2col(self.x, KH, KW, SH, SW, PH, PW, OH, OW)
            # sum over n of gy[n] (O, OH*OW) @ cols[n].T (OH*OW, C*KH*KW)
            gW = xp.matmul(gy, cols.transpose(0, 2, 1)).sum(axis=0)
            gW = gW.reshape(O, -1, KH, KW)
        if need_gb:
            gb = gy.sum(axis=(0, 2))
        if need_gx:
            gcols = xp.matmul(self.W.reshape(O, -1).T, gy)      # (N, C*KH*KW, OH*OW)
            gx = self._col2im(gcols, self.x_shape, KH, KW, SH, SW, PH, PW, OH, OW)
        return gx, gW, gb

    @staticmethod
    def _col2im(gcols, x_shape, KH, KW, SH, SW, PH, PW, OH, OW):
        """The adjoint of im2col: add each patch gradient back where the patch came from."""
        xp = get_array_module(gcols)
        N, C, H, W = x_shape
        if (KH, KW, SH, SW, PH, PW) == (1, 1, 1, 1, 0, 0):
            return gcols.reshape(N, C, H, W)
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
