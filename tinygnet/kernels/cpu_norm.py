"""The fast CPU batch norm: blocks of channels on several threads, no temporaries.

The reference (``functional/norm.py``) writes batch norm as plain array
expressions, each making a new array. This fast path computes the same
function with:

* **Threads**: every channel is normalised on its own, so the channels are
  cut into blocks that tinygnet's CPU threads run at once
  (``threads.parallel_for``);
* **Fewer passes over memory**: the per-channel sums are ``einsum``
  reductions (one pass, no product array), and each output array is
  allocated once per call, up front, then filled block by block in place
  (``out=``).

The ReLU that follows every batch norm in GoogLeNet is not part of this op:
it is its own op, with its own fast path (``cpu_activation.py``).
"""
from __future__ import annotations

import numpy as np

from ..dispatch import register_fast
from ..functional.norm import BatchNorm, per_channel
from .threads import parallel_for

__all__ = ["BatchNormChunked"]

# Channels are cut into blocks for the threads, each with at least this many
# values. Batch norm's passes are quick (einsum sums, one multiply-add), so the
# hand-off to a thread pays only on big inputs (tuned on GoogLeNet's training
# step; docs/performance.md).
MIN_BLOCK_ELEMENTS = 1 << 22


def _channel_sum(a, b=None):
    """sum over every axis but 1 of ``a`` (or of ``a * b``, without forming it): (C,).

    ``einsum`` reduces in one pass with no temporary, where
    ``(a * b).sum(axis=(0, 2, 3))`` first writes the whole product.
    """
    a3 = a.reshape(a.shape[0], a.shape[1], -1)        # (N, C, H*W), a view
    if b is None:
        return np.einsum("ncl->c", a3)
    return np.einsum("ncl,ncl->c", a3, b.reshape(a3.shape))


@register_fast(BatchNorm, "cpu")
class BatchNormChunked(BatchNorm):
    """Replaces functional.norm.BatchNorm on the CPU: channel blocks on threads, sums in one pass.

    The same maths as the reference, written with xc = x - mean instead of
    x_hat (inv_std = 1/sqrt(var + eps), sums over N, H, W):

        gb = sum(gy)            gW = sum(gy * xc) * inv_std
        gx = weight * inv_std * (gy - gb/m - xc * inv_std^2 * sum(gy * xc)/m)

    Sums are ``einsum`` reductions (one pass, no product array), and every
    other array is written in place (``out=``). xc is not kept: backward
    rebuilds it from x, which the graph keeps anyway as this op's input, so
    a batch norm holds no array as large as x beyond its input and output.
    """

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        C = x.shape[1]
        m = x.size // C
        y = np.empty_like(x)
        mean = np.empty(C, dtype=x.dtype)       # the mean subtracted: the batch's or the running one
        inv_std = np.empty(C, dtype=x.dtype)
        scale = np.empty(C, dtype=x.dtype)

        def normalise(c0, c1):     # channels c0..c1
            xs, ys = x[:, c0:c1], y[:, c0:c1]
            if training:
                mean[c0:c1] = _channel_sum(xs) / m
                np.subtract(xs, per_channel(mean[c0:c1], x.ndim), out=ys)     # xc, built in y
                var = _channel_sum(ys, ys) / m
                if running_mean is not None:
                    r = running_mean[c0:c1]
                    r *= 1 - momentum
                    r += momentum * mean[c0:c1].astype(r.dtype, copy=False)
                if running_var is not None:
                    r = running_var[c0:c1]
                    r *= 1 - momentum
                    r += (momentum * m / (m - 1)) * var.astype(r.dtype, copy=False)
            else:
                mean[c0:c1] = running_mean[c0:c1].astype(x.dtype, copy=False)
                var = running_var[c0:c1].astype(x.dtype, copy=False)
            inv_std[c0:c1] = 1.0 / np.sqrt(var + eps)
            scale[c0:c1] = inv_std[c0:c1] if weight is None else weight[c0:c1] * inv_std[c0:c1]
            sc = per_channel(scale[c0:c1], x.ndim)
            if training:                      # y = xc * scale + bias
                ys *= sc
                if bias is not None:
                    ys += per_channel(bias[c0:c1], x.ndim)
            else:                             # y = x * scale + (bias - mean * scale)
                shift = -mean[c0:c1] * scale[c0:c1]
                if bias is not None:
                    shift += bias[c0:c1]
                np.multiply(xs, sc, out=ys)
                ys += per_channel(shift, x.ndim)

        parallel_for(C, normalise, min_chunk=MIN_BLOCK_ELEMENTS // m + 1)
        if any(self.needs_input_grad):
            self.training, self.m, self.ndim = training, m, x.ndim
            self.mean, self.inv_std, self.scale = mean, inv_std, scale
            # Backward rebuilds xc = x - mean from x (which the graph keeps anyway, as
            # this op's input) rather than keeping an xc as large as x.
            needs_xc = self.needs_input_grad[1] or (training and self.needs_input_grad[0])
            self.x = x if needs_xc else None
        return y

    def backward(self, gy):
        need_gx, need_gW, need_gb = self.needs_input_grad[:3]
        C = gy.shape[1]
        need_sums = self.training and need_gx
        gb = np.empty(C, dtype=gy.dtype) if (need_gb or need_sums) else None
        gW = np.empty(C, dtype=gy.dtype) if need_gW else None
        gx = np.empty_like(gy) if need_gx else None

        def shaped(c_array):          # (C,) -> broadcastable against gy
            return per_channel(c_array, self.ndim)

        def backward_channels(c0, c1):
            g = gy[:, c0:c1]
            if gb is not None:
                gb[c0:c1] = _channel_sum(g)
            if need_gW or need_sums:          # xc = x - mean, rebuilt in gx's block if it has one
                xc = gx[:, c0:c1] if need_gx else np.empty(g.shape, dtype=gy.dtype)
                np.subtract(self.x[:, c0:c1], shaped(self.mean[c0:c1]), out=xc)
                gxc = _channel_sum(g, xc)                                 # sum(gy * xc)
            if need_gW:
                gW[c0:c1] = gxc * self.inv_std[c0:c1]
            if not need_gx:
                return
            gxs, scale = gx[:, c0:c1], self.scale[c0:c1]
            if self.training:
                # gx = scale * (gy - gb/m - xc * inv_std^2 * gxc/m), built in one buffer (xc's)
                inv_std = self.inv_std[c0:c1]
                gxs *= shaped(-inv_std * inv_std * gxc / self.m)
                gxs += g
                gxs += shaped(-gb[c0:c1] / self.m)
                gxs *= shaped(scale)
            else:
                np.multiply(g, shaped(scale), out=gxs)

        parallel_for(C, backward_channels, min_chunk=MIN_BLOCK_ELEMENTS // self.m + 1)
        return gx, gW, (gb if need_gb else None)
