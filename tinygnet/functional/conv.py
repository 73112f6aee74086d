"""2-D convolution: im2col, then one matrix product per image.

Notation: the input x is (N, C, H, W), the weight W is (O, C, KH, KW), the
output y is (N, O, OH, OW); SH, SW are the strides and PH, PW the zero
paddings on each side, and

    OH = (H + 2*PH - KH) // SH + 1,    OW = (W + 2*PW - KW) // SW + 1.

im2col lays every KH x KW patch of the padded input out as one column:

    cols[n, (c, kh, kw), (oh, ow)] = x_pad[n, c, oh*SH + kh, ow*SW + kw]

so cols is (N, C*KH*KW, OH*OW) and the convolution is a matrix product,

    y[n] = W2 @ cols[n]        W2 = W as (O, C*KH*KW),  y[n] as (O, OH*OW).

Backward follows from the product rule for matrices:

    gW2 = sum over n of gy[n] @ cols[n]^T        (O, C*KH*KW)
    gcols[n] = W2^T @ gy[n]                      (C*KH*KW, OH*OW)
    gb[o] = sum of gy[:, o] over n and pixels
    gx = col2im(gcols)

col2im is the adjoint of im2col: a pixel of x sits in several patches (when
the stride is smaller than the kernel), so its gradient is the sum of the
gradients of every patch position it was copied to. Both loop over the
KH*KW kernel offsets, never over pixels: for one offset (kh, kw), the
pixels that land there form one strided slice of x_pad.

The fast paths (tinygnet/kernels): on the CPU, one GEMM over the whole batch
on several threads with reused scratch memory; on the GPU, im2col and col2im
as CUDA kernels.
"""
from __future__ import annotations

from ..backend import get_array_module
from ..tensor import Function
from .checks import check_float, check_ndim, pair

__all__ = ["Conv2d", "conv2d", "conv_output_size", "is_pointwise", "im2col", "col2im"]


def conv_output_size(size, kernel, stride, padding):
    """OH from H (or OW from W)."""
    return (size + 2 * padding - kernel) // stride + 1


def is_pointwise(KH, KW, SH, SW, PH, PW):
    """A 1x1 kernel, stride 1, no padding: im2col's cols is x itself, and the conv is a
    matrix product over the channels at every pixel (the fast paths skip im2col then)."""
    return (KH, KW, SH, SW, PH, PW) == (1, 1, 1, 1, 0, 0)


def im2col(x, KH, KW, SH, SW, PH, PW):
    """cols (N, C*KH*KW, OH*OW): every patch of the zero-padded x as a column."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    OH, OW = conv_output_size(H, KH, SH, PH), conv_output_size(W, KW, SW, PW)
    x_pad = xp.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))      # N, C, H + 2PH, W + 2PW
    cols = xp.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
    for kh in range(KH):
        for kw in range(KW):
            # the pixel at offset (kh, kw) of every patch: rows kh, kh + SH, ...
            cols[:, :, kh, kw] = x_pad[:, :, kh:kh + SH * OH:SH, kw:kw + SW * OW:SW]
    return cols.reshape(N, C * KH * KW, OH * OW)


def col2im(gcols, x_shape, KH, KW, SH, SW, PH, PW):
    """gx (N, C, H, W) from gcols (N, C*KH*KW, OH*OW): the adjoint of im2col."""
    xp = get_array_module(gcols)
    N, C, H, W = x_shape
    OH, OW = conv_output_size(H, KH, SH, PH), conv_output_size(W, KW, SW, PW)
    gcols = gcols.reshape(N, C, KH, KW, OH, OW)
    gx_pad = xp.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=gcols.dtype)
    for kh in range(KH):
        for kw in range(KW):
            # overlapping patches add up where they share a pixel
            gx_pad[:, :, kh:kh + SH * OH:SH, kw:kw + SW * OW:SW] += gcols[:, :, kh, kw]
    return gx_pad[:, :, PH:PH + H, PW:PW + W]


class Conv2d(Function):
    """y[n, o, oh, ow] = b[o] + sum over c, kh, kw of
    W[o, c, kh, kw] * x_pad[n, c, oh*SH + kh, ow*SW + kw]."""

    def forward(self, x, W, b=None, stride=(1, 1), padding=(0, 0)):
        N, C, H, W_in = x.shape
        O, _, KH, KW = W.shape
        (SH, SW), (PH, PW) = stride, padding
        OH, OW = conv_output_size(H, KH, SH, PH), conv_output_size(W_in, KW, SW, PW)
        cols = im2col(x, KH, KW, SH, SW, PH, PW)          # N, C*KH*KW, OH*OW
        W2 = W.reshape(O, C * KH * KW)                    # O, C*KH*KW
        y = W2 @ cols                                     # N, O, OH*OW (one product per image)
        if b is not None:
            y += b.reshape(O, 1)
        # Backward: gW needs the columns, gx needs the weight.
        need_gx, need_gW = self.needs_input_grad[:2]
        self.cols = cols if need_gW else None
        self.W2 = W2 if need_gx else None
        self.x_shape, self.geometry = x.shape, (KH, KW, SH, SW, PH, PW)
        return y.reshape(N, O, OH, OW)

    def backward(self, gy):
        xp = get_array_module(gy)
        N, O, OH, OW = gy.shape
        KH, KW, SH, SW, PH, PW = self.geometry
        C = self.x_shape[1]
        gy = gy.reshape(N, O, OH * OW)
        need_gx, need_gW, need_gb = self.needs_input_grad
        gx = gW = gb = None
        if need_gW:
            # gW2[o, k] = sum over n and l of gy[n, o, l] * cols[n, k, l]
            gW = xp.tensordot(gy, self.cols, axes=([0, 2], [0, 2])).reshape(O, C, KH, KW)
        if need_gb:
            gb = gy.sum(axis=(0, 2))                      # O
        if need_gx:
            gcols = self.W2.T @ gy                        # N, C*KH*KW, OH*OW
            gx = col2im(gcols, self.x_shape, KH, KW, SH, SW, PH, PW)
        return gx, gW, gb


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
