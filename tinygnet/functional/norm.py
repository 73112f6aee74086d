"""Normalisation: local_response_norm (GoogLeNet's LRN) and batch_norm.

Notation: x is (N, C, H, W) (LRN takes any (N, C, ...)); batch norm also
takes (N, C). ``gy, gx`` are dLoss/dy and dLoss/dx; ``gW, gb`` the
gradients of batch norm's weight (gamma) and bias (beta), each (C,).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..tensor import Function, Tensor
from .checks import check_float

__all__ = ["local_response_norm", "batch_norm", "per_channel"]


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
        before, after = size // 2, (size - 1) // 2
        scale = k + alpha / size * _window_sum(x * x, before, after)    # S
        scale_pow = scale ** -beta                                       # S^(-beta)
        if self.needs_input_grad[0]:
            self.x, self.scale, self.scale_pow = x, scale, scale_pow
            self.size, self.alpha, self.beta = size, alpha, beta
        return x * scale_pow

    def backward(self, gy):
        before, after = self.size // 2, (self.size - 1) // 2
        t = gy * self.x * self.scale_pow / self.scale                   # gy_c x_c S_c^(-beta-1)
        t = _window_sum(t, after, before)                                # the mirrored window
        return gy * self.scale_pow - 2.0 * self.alpha * self.beta / self.size * self.x * t


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
def per_channel(c_array, ndim):
    """A (C,) array shaped to broadcast against (N, C) or (N, C, H, W)."""
    return c_array.reshape((1, -1) + (1,) * (ndim - 2))


class BatchNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel.

    Training: mean and var (biased) are the batch's, over the m = N*H*W
    values of each channel; the running estimates are updated in place with
    the unbiased var * m/(m-1). Evaluation: the running estimates are used.

    With x_hat = (x - mean) * inv_std, inv_std = 1/sqrt(var + eps), and sums
    and means over N, H, W (per channel):

        gb = sum(gy)            gW = sum(gy * x_hat)
        training:   gx = weight * inv_std * (gy - mean(gy) - x_hat * mean(gy * x_hat))
        evaluation: gx = weight * inv_std * gy      (y is affine in x)

    In training the batch's mean and var depend on x too: the two subtracted
    terms are their share of the gradient.
    """

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        xp = get_array_module(x)
        C = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))                # every axis but the channels
        m = x.size // C
        if training:
            mean = x.mean(axis=axes)                         # C
            var = ((x - per_channel(mean, x.ndim)) ** 2).mean(axis=axes)
            if running_mean is not None:                     # updated in place
                running_mean *= 1 - momentum
                running_mean += momentum * mean.astype(running_mean.dtype)
            if running_var is not None:
                running_var *= 1 - momentum
                running_var += momentum * m / (m - 1) * var.astype(running_var.dtype)
        else:
            mean = running_mean.astype(x.dtype)
            var = running_var.astype(x.dtype)
        inv_std = 1.0 / xp.sqrt(var + eps)                   # C
        x_hat = (x - per_channel(mean, x.ndim)) * per_channel(inv_std, x.ndim)
        y = x_hat
        if weight is not None:
            y = y * per_channel(weight, x.ndim)
        if bias is not None:
            y = y + per_channel(bias, x.ndim)
        if any(self.needs_input_grad):
            self.x_hat, self.inv_std, self.weight = x_hat, inv_std, weight
            self.training = training
        return y

    def backward(self, gy):
        need_gx, need_gW, need_gb = self.needs_input_grad[:3]
        ndim = gy.ndim
        axes = (0,) + tuple(range(2, ndim))
        gb = gy.sum(axis=axes) if need_gb else None
        gW = (gy * self.x_hat).sum(axis=axes) if need_gW else None
        gx = None
        if need_gx:
            scale = self.inv_std if self.weight is None else self.weight * self.inv_std
            if self.training:
                mean_gy = gy.mean(axis=axes)
                mean_gy_x_hat = (gy * self.x_hat).mean(axis=axes)
                gx = (gy - per_channel(mean_gy, ndim)
                      - self.x_hat * per_channel(mean_gy_x_hat, ndim)) * per_channel(scale, ndim)
            else:
                gx = gy * per_channel(scale, ndim)
        return gx, gW, gb


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
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected an input of 2 or more dims (N, C, ...), "
                         f"got shape {tuple(x.shape)}")
    check_float(x, "batch_norm")
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if tuple(t.shape) != (C,):
            raise ValueError(f"batch_norm: {name} must have shape ({C},) for an input of shape "
                             f"{tuple(x.shape)}, got {tuple(t.shape)}")
        check_float(t, "batch_norm", name)
        if name in ("weight", "bias") and t.dtype != x.dtype:
            raise TypeError(f"batch_norm: {name} is {t.dtype} but the input is {x.dtype}; "
                            f"convert one with .to(dtype=...)")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: evaluation mode (training=False) needs running_mean and "
                         "running_var")
    if training and x.size // max(C, 1) < 2:
        raise ValueError(f"batch_norm: training needs more than one value per channel, got an "
                         f"input of shape {tuple(x.shape)}")
    if not 0 <= momentum <= 1:
        raise ValueError(f"batch_norm: momentum must be in [0, 1], got {momentum!r}")
    return BatchNorm.apply(x, weight, bias,
                           running_mean=_data(running_mean), running_var=_data(running_var),
                           training=bool(training), momentum=float(momentum), eps=float(eps))


def _data(t):
    return t.data if isinstance(t, Tensor) else t
