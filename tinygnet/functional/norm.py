"""Normalisation: local_response_norm (GoogLeNet's LRN) and batch_norm.

Notation: x is (N, C, H, W) (LRN takes any (N, C, ...)); batch norm also
takes (N, C). ``gy, gx`` are dLoss/dy and dLoss/dx; ``gW, gb`` the
gradients of batch norm's weight (gamma) and bias (beta), each (C,).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, parallel_for
from ..cuda import kernels
from ..tensor import Function, Tensor
from ._checks import check_float

__all__ = ["local_response_norm", "batch_norm", "batch_norm_relu"]


# --------------------------------------------------------------------------
# Local response normalisation
# --------------------------------------------------------------------------
def _window_sum(a, before, after):
    """s[:, c] = sum of a[:, c'] for c - before <= c' <= c + after (zeros past the ends).

    One slice-add per offset in the window (``before + after + 1`` of them),
    not a loop over channels.
    """
    s = a.copy()
    for d in range(1, before + 1):      # channel c collects c - d
        s[:, d:] += a[:, :-d]
    for d in range(1, after + 1):       # channel c collects c + d
        s[:, :-d] += a[:, d:]
    return s


class LocalResponseNorm(Function):
    """Normalise each value by the energy of its neighbouring channels.

        S_c = k + alpha / size * sum_{c' in window(c)} x_{c'}^2
        y_c = x_c * S_c^(-beta)

    window(c) = c - size//2 ... c + (size-1)//2, zeros past the ends (as
    PyTorch). Backward: x_j appears in its own y_j and in S_c of every c
    whose window holds j, i.e. c in j - (size-1)//2 ... j + size//2 (the
    window mirrored):

        gx_j = gy_j S_j^(-beta)
               - 2 alpha beta / size * x_j * sum_{c: j in window(c)} gy_c x_c S_c^(-beta-1)
    """

    def forward(self, x, size, alpha, beta, k):
        xp = get_array_module(x)
        if xp is not np:   # GPU: one kernel; backward recomputes S^(-beta) from S
            y, scale = kernels.lrn_forward(x, size, alpha, beta, k)
            if self.needs_input_grad[0]:
                self.x, self.scale, self.size, self.alpha, self.beta = x, scale, size, alpha, beta
            return y
        before, after = size // 2, (size - 1) // 2
        scale = _window_sum(x * x, before, after)   # S, built in place
        scale *= alpha / size
        scale += k
        scale_pow = xp.power(scale, -beta)          # S^(-beta)
        if self.needs_input_grad[0]:
            self.x, self.scale, self.scale_pow = x, scale, scale_pow
            self.size, self.alpha, self.beta = size, alpha, beta
        return x * scale_pow

    def backward(self, gy):
        if get_array_module(gy) is not np:
            return kernels.lrn_backward(self.x, self.scale, gy, self.size, self.alpha, self.beta)
        before, after = self.size // 2, (self.size - 1) // 2
        t = gy * self.x
        t *= self.scale_pow
        t /= self.scale                              # gy_c x_c S_c^(-beta-1)
        t = _window_sum(t, after, before)            # the mirrored window
        t *= self.x
        t *= -2.0 * self.alpha * self.beta / self.size
        t += gy * self.scale_pow
        return t


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalisation across channels, as ``torch.nn.functional``.

    ``y_c = x_c * (k + alpha/size * sum of x_{c'}^2 over the size channels
    around c) ** -beta``. ``x`` is (N, C, ...) with at least 3 dims.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    if x.ndim < 3:
        raise ValueError(f"local_response_norm: expected an input of 3 or more dims "
                         f"(N, C, ...), got shape {tuple(x.shape)}")
    check_float(x, "local_response_norm")
    return LocalResponseNorm.apply(x, size=int(size), alpha=float(alpha), beta=float(beta),
                                   k=float(k))


# --------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------
# Channels are cut into blocks for the CPU threads, each with at least this many
# values. Batch norm's passes are quick (einsum sums, one multiply-add), so the
# hand-off to a thread pays only on big inputs: at the demo's width (under 1M
# values per layer) two threads were no faster, at width 1 (8M to 25M) they are.
_MIN_CHUNK_ELEMENTS = 1 << 22


def _per_channel(c_array, ndim):
    """A (C,) array shaped to broadcast against (N, C) or (N, C, H, W)."""
    return c_array.reshape((1, -1) + (1,) * (ndim - 2))


def _channel_sum(a, b=None):
    """sum over every axis but 1 of ``a`` (or of ``a * b``, without forming it): (C,).

    ``einsum`` reduces in one pass with no temporary, several times faster
    than ``(a * b).sum(axis=(0, 2, 3))`` on the CPU.
    """
    a3 = a.reshape(a.shape[0], a.shape[1], -1)        # (N, C, H*W), a view
    xp = get_array_module(a)
    if b is None:
        return xp.einsum("ncl->c", a3)
    return xp.einsum("ncl,ncl->c", a3, b.reshape(a3.shape))


class BatchNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel.

    Training: mean and var (biased) are the batch's, over the m = N*H*W values
    of each channel; the running estimates are updated in place with the
    unbiased var * m/(m-1). Evaluation: the running estimates are used.

    Backward in training mode, with xc = x - mean, inv_std = 1/sqrt(var + eps):

        gb = sum(gy)            gW = sum(gy * xc) * inv_std
        gx = weight * inv_std * (gy - gb/m - xc * inv_std^2 * sum(gy * xc)/m)

    (sums over N, H, W). In evaluation mode y is affine in x:
    gx = gy * weight * inv_std.

    ``relu=True`` fuses the ReLU that follows every batch norm in GoogLeNet:
    y = max(BN(x), 0) is taken in place on BN's fresh output (no second
    array), and backward first masks gy with y > 0 (ReLU's backward, from
    the saved output) and then runs BN's backward on the masked gradient.

    Every channel is normalised on its own, so the channels are cut into
    chunks that the CPU threads run at once (``backend.parallel_for``).
    """

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps,
                relu=False):
        xp = get_array_module(x)
        C = x.shape[1]
        m = x.size // C
        needs_grad = any(self.needs_input_grad)
        y = xp.empty_like(x)
        # xc = x - mean is kept for backward; without a graph it is built in y.
        xc = (xp.empty_like(x) if needs_grad else y) if training else None
        inv_std = xp.empty(C, dtype=x.dtype)
        scale = xp.empty(C, dtype=x.dtype)

        def normalise(c0, c1):     # channels c0..c1
            xs, ys = x[:, c0:c1], y[:, c0:c1]
            if training:
                mean = _channel_sum(xs) / m
                xcs = xc[:, c0:c1]
                xp.subtract(xs, _per_channel(mean, x.ndim), out=xcs)
                var = _channel_sum(xcs, xcs) / m
                if running_mean is not None:
                    r = running_mean[c0:c1]
                    r *= 1 - momentum
                    r += momentum * mean.astype(r.dtype, copy=False)
                if running_var is not None:
                    r = running_var[c0:c1]
                    r *= 1 - momentum
                    r += (momentum * m / (m - 1)) * var.astype(r.dtype, copy=False)
            else:
                mean = running_mean[c0:c1].astype(x.dtype, copy=False)
                var = running_var[c0:c1].astype(x.dtype, copy=False)
            inv_std[c0:c1] = 1.0 / xp.sqrt(var + eps)
            scale[c0:c1] = inv_std[c0:c1] if weight is None else weight[c0:c1] * inv_std[c0:c1]
            sc = _per_channel(scale[c0:c1], x.ndim)
            if training:                      # y = xc * scale + bias
                xp.multiply(xcs, sc, out=ys)
                if bias is not None:
                    ys += _per_channel(bias[c0:c1], x.ndim)
            else:                             # y = x * scale + (bias - mean * scale)
                shift = -mean * scale[c0:c1]
                if bias is not None:
                    shift += bias[c0:c1]
                xp.multiply(xs, sc, out=ys)
                ys += _per_channel(shift, x.ndim)
            if relu:
                xp.maximum(ys, 0, out=ys)     # y is ours: ReLU in place

        parallel_for(C, normalise, min_chunk=_MIN_CHUNK_ELEMENTS // m + 1, xp=xp)
        if needs_grad:
            self.training, self.m, self.ndim = training, m, x.ndim
            self.inv_std, self.scale = inv_std, scale
            self.y = y if relu else None      # ReLU's backward needs only y > 0
            if training:
                self.xc = xc
            elif self.needs_input_grad[1]:                         # gW needs x_hat
                self.xc = x - _per_channel(running_mean.astype(x.dtype, copy=False), x.ndim)
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        need_gx, need_gW, need_gb = self.needs_input_grad[:3]
        C = gy.shape[1]
        need_sums = self.training and need_gx
        gb = xp.empty(C, dtype=gy.dtype) if (need_gb or need_sums) else None
        gW = xp.empty(C, dtype=gy.dtype) if need_gW else None
        gx = xp.empty_like(gy) if need_gx else None

        def per_channel(c_array):
            return _per_channel(c_array, self.ndim)

        def backward_channels(c0, c1):
            g = gy[:, c0:c1]
            if self.y is not None:
                g = g * (self.y[:, c0:c1] > 0)   # through the fused ReLU first
            if gb is not None:
                gb[c0:c1] = _channel_sum(g)
            gxc = (_channel_sum(g, self.xc[:, c0:c1])
                   if (need_gW or need_sums) else None)             # sum(gy * xc)
            if need_gW:
                gW[c0:c1] = gxc * self.inv_std[c0:c1]
            if not need_gx:
                return
            gxs, scale = gx[:, c0:c1], self.scale[c0:c1]
            if self.training:
                # gx = scale * (gy - gb/m - xc * inv_std^2 * gxc/m), built in one buffer
                inv_std = self.inv_std[c0:c1]
                xp.multiply(self.xc[:, c0:c1], per_channel(-inv_std * inv_std * gxc / self.m),
                            out=gxs)
                gxs += g
                gxs += per_channel(-gb[c0:c1] / self.m)
                gxs *= per_channel(scale)
            else:
                xp.multiply(g, per_channel(scale), out=gxs)

        parallel_for(C, backward_channels, min_chunk=_MIN_CHUNK_ELEMENTS // self.m + 1, xp=xp)
        return gx, gW, (gb if need_gb else None)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation over N (and H, W) for each channel, as ``torch.nn.functional``.

    Args:
        x: (N, C) or (N, C, H, W) (any (N, C, ...)).
        running_mean, running_var: (C,) Tensors or None. In training mode they
            are updated in place: ``r = (1 - momentum) * r + momentum * batch``,
            with the unbiased batch variance. Evaluation mode normalises with them.
        weight, bias: (C,) Tensors or None (the affine gamma and beta).
        training: use (and update with) the batch statistics.
    """
    return _batch_norm("batch_norm", x, running_mean, running_var, weight, bias, training,
                       momentum, eps, relu=False)


def batch_norm_relu(x, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5):
    """``relu(batch_norm(...))`` as one op: same arguments and result as that pair, but
    one output array instead of two (the ReLU is taken in place; see ``BatchNorm``)."""
    return _batch_norm("batch_norm_relu", x, running_mean, running_var, weight, bias, training,
                       momentum, eps, relu=True)


def _batch_norm(op, x, running_mean, running_var, weight, bias, training, momentum, eps, relu):
    """Check the arguments of batch_norm (or batch_norm_relu) and apply the op."""
    if x.ndim < 2:
        raise ValueError(f"{op}: expected an input of 2 or more dims (N, C, ...), "
                         f"got shape {tuple(x.shape)}")
    check_float(x, op)
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if tuple(t.shape) != (C,):
            raise ValueError(f"{op}: {name} must have shape ({C},) for an input of shape "
                             f"{tuple(x.shape)}, got {tuple(t.shape)}")
        check_float(t, op, name)
        if name in ("weight", "bias") and t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} is {t.dtype} but the input is {x.dtype}; "
                            f"convert one with .to(dtype=...)")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: evaluation mode (training=False) needs running_mean and "
                         f"running_var")
    if training and x.size // max(C, 1) < 2:
        raise ValueError(f"{op}: training needs more than one value per channel, got an "
                         f"input of shape {tuple(x.shape)}")
    if not 0 <= momentum <= 1:
        raise ValueError(f"{op}: momentum must be in [0, 1], got {momentum!r}")
    return BatchNorm.apply(x, weight, bias,
                           running_mean=_data(running_mean), running_var=_data(running_var),
                           training=bool(training), momentum=float(momentum), eps=float(eps),
                           relu=relu)


def _data(t):
    return t.data if isinstance(t, Tensor) else t
