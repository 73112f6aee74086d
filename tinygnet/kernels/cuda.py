"""The GPU fast paths: the ops whose reference is slow as generic CuPy code.

Each class replaces one reference op of ``tinygnet.functional`` on the GPU
and calls the CUDA kernels of ``cuda_kernels.py`` where the reference runs
many small array operations: im2col and col2im, max pooling, local response
normalisation, the ReLU gradient and softmax cross-entropy. Every other op
runs its reference on the GPU as it is (CuPy arrays through ``xp``).

Nothing here imports CuPy: the kernels are compiled the first time a GPU
array reaches them.
"""
from __future__ import annotations

from ..backend import get_array_module
from ..dispatch import register_fast
from ..functional.activation import ReLU
from ..functional.conv import Conv2d, conv_output_size, is_pointwise
from ..functional.loss import CrossEntropy
from ..functional.norm import LocalResponseNorm
from ..functional.pool import MaxPool2d, pool_output_size
from . import cuda_kernels as kernels

__all__ = ["Conv2dCudaIm2col", "MaxPool2dCuda", "LocalResponseNormCuda", "ReLUCuda",
           "CrossEntropyCuda"]


@register_fast(Conv2d, "cuda")
class Conv2dCudaIm2col(Conv2d):
    """Replaces functional.conv.Conv2d on the GPU: im2col and col2im as one kernel each.

    The im2col kernel reads the zero padding instead of storing a padded copy
    of x; col2im gathers each pixel's gradient in one thread (no atomics).
    cols is rebuilt in backward from the saved x (the memory of x, not KH*KW
    times it, per convolution of the network).
    """

    def forward(self, x, W, b=None, stride=(1, 1), padding=(0, 0)):
        xp = get_array_module(x)
        N, C, H, W_in = x.shape
        O, _, KH, KW = W.shape
        (SH, SW), (PH, PW) = stride, padding
        OH, OW = conv_output_size(H, KH, SH, PH), conv_output_size(W_in, KW, SW, PW)
        geometry = (KH, KW, SH, SW, PH, PW, OH, OW)
        y = xp.matmul(W.reshape(O, -1), self._im2col(x, *geometry))     # N, O, OH*OW
        if b is not None:
            y += b.reshape(O, 1)
        need_gx, need_gW = self.needs_input_grad[:2]
        self.x = x if need_gW else None
        self.W = W if need_gx else None
        self.x_shape, self.geometry = x.shape, geometry
        return y.reshape(N, O, OH, OW)

    @staticmethod
    def _im2col(x, KH, KW, SH, SW, PH, PW, OH, OW):
        if is_pointwise(KH, KW, SH, SW, PH, PW):
            N, C, H, W = x.shape
            return x.reshape(N, C, H * W)
        return kernels.im2col(x, KH, KW, SH, SW, PH, PW, OH, OW)      # N, C*KH*KW, OH*OW

    def backward(self, gy):
        xp = get_array_module(gy)
        KH, KW, SH, SW, PH, PW, OH, OW = self.geometry
        N, O = gy.shape[:2]
        gy = gy.reshape(N, O, OH * OW)
        need_gx, need_gW, need_gb = self.needs_input_grad
        gx = gW = gb = None
        if need_gW:   # sum over n of gy[n] (O, OH*OW) @ cols[n].T (OH*OW, C*KH*KW)
            cols = self._im2col(self.x, *self.geometry)
            gW = xp.matmul(gy, cols.transpose(0, 2, 1)).sum(axis=0).reshape(O, -1, KH, KW)
        if need_gb:
            gb = gy.sum(axis=(0, 2))
        if need_gx:
            gcols = xp.matmul(self.W.reshape(O, -1).T, gy)                  # N, C*KH*KW, OH*OW
            if is_pointwise(KH, KW, SH, SW, PH, PW):
                gx = gcols.reshape(self.x_shape)
            else:
                gx = kernels.col2im(gcols, self.x_shape, *self.geometry)
        return gx, gW, gb


@register_fast(MaxPool2d, "cuda")
class MaxPool2dCuda(MaxPool2d):
    """Replaces functional.pool.MaxPool2d on the GPU: one kernel each way, not KH*KW passes.

    A thread per output (forward) or per input pixel (backward). The forward
    kernel records the winner as its index h * W + w in the plane (int32); the
    backward kernel lets each input pixel gather the gy of every window it won.
    """

    def forward(self, x, kernel_size, stride, padding, ceil_mode):
        (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
        H, W = x.shape[2:]
        OH = pool_output_size(H, KH, SH, PH, ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, ceil_mode)
        y, argmax = kernels.max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, OH, OW)
        if self.needs_input_grad[0]:
            self.argmax, self.geometry = argmax, (x.shape, KH, KW, SH, SW, PH, PW, OH, OW)
            self.dtype = x.dtype
        return y

    def backward(self, gy):
        return kernels.max_pool2d_backward(gy, self.argmax, *self.geometry, dtype=self.dtype)


@register_fast(LocalResponseNorm, "cuda")
class LocalResponseNormCuda(LocalResponseNorm):
    """Replaces functional.norm.LocalResponseNorm on the GPU: one kernel, not a pass per offset.

    Each thread sums its own channel window."""

    def forward(self, x, size, alpha, beta, k):
        y, scale = kernels.lrn_forward(x, size, alpha, beta, k)
        if self.needs_input_grad[0]:        # backward recomputes S^(-beta) from S
            self.x, self.scale, self.size, self.alpha, self.beta = x, scale, size, alpha, beta
        return y

    def backward(self, gy):
        return kernels.lrn_backward(self.x, self.scale, gy, self.size, self.alpha, self.beta)


@register_fast(ReLU, "cuda")
class ReLUCuda(ReLU):
    """Replaces functional.activation.ReLU's backward on the GPU: one pass, no boolean mask."""

    def backward(self, gy):
        return kernels.relu_backward(gy, self.y)


@register_fast(CrossEntropy, "cuda")
class CrossEntropyCuda(CrossEntropy):
    """Replaces functional.loss.CrossEntropy on the GPU: two kernels instead of a dozen small ones.

    A thread per row forward (max, sums, softmax), one elementwise pass backward."""

    def forward(self, x, targets, reduction, label_smoothing):
        loss, p = kernels.cross_entropy_forward(x, targets, label_smoothing,
                                                keep_softmax=self.needs_input_grad[0])
        if self.needs_input_grad[0]:
            self.p, self.targets = p, targets
            self.reduction, self.label_smoothing = reduction, label_smoothing
        if reduction == "none":
            return loss
        return loss.mean() if reduction == "mean" else loss.sum()

    def backward(self, gy):
        return kernels.cross_entropy_backward(self.p, self.targets, gy, self.label_smoothing,
                                              self.reduction)
