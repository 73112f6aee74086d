"""Activations and dropout: relu, dropout, softmax, log_softmax.

Notation: ``x, y`` are an op's input and output, ``gy`` is dLoss/dy and
``gx`` is dLoss/dx; all have the same shape here.
"""
from __future__ import annotations

import numbers

from ..backend import generator_for, get_array_module
from ..tensor import Function
from .checks import check_float

__all__ = ["relu", "dropout", "softmax", "log_softmax"]


class ReLU(Function):
    """y = max(x, 0);  gx = gy where y > 0, else 0."""

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.maximum(x, 0)
        # y > 0 is exactly x > 0; y is usually kept alive by the next op anyway.
        self.y = y if self.needs_input_grad[0] else None
        return y

    def backward(self, gy):
        return gy * (self.y > 0)


def relu(x):
    """max(x, 0), elementwise."""
    return ReLU.apply(x)


class Dropout(Function):
    """Inverted dropout: y = x * mask, mask = 1/(1-p) with probability 1-p, else 0.

    Scaling the kept units at training time keeps E[y] = x, so evaluation
    needs no rescaling. gx = gy * mask (the same mask).
    """

    def forward(self, x, p):
        xp = get_array_module(x)
        # uniform in [0, 1), drawn in x's dtype; a unit is kept when u >= p
        keep = generator_for(xp).random(x.shape, dtype=x.dtype) >= p
        mask = keep.astype(x.dtype)
        if p < 1:                          # (p == 1 keeps nothing: the mask is all zeros)
            mask = mask * (1.0 / (1.0 - p))
        self.mask = mask if self.needs_input_grad[0] else None
        return x * mask

    def backward(self, gy):
        return gy * self.mask


def dropout(x, p=0.5, training=True):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p).

    With ``training=False`` or ``p == 0`` this is the identity and returns
    ``x`` itself. ``p == 1`` gives zeros. Random numbers come from
    ``tinygnet.backend.generator_for`` (seeded by ``tinygnet.manual_seed``).
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0:
        return x
    check_float(x, "dropout")
    return Dropout.apply(x, p=float(p))


class Softmax(Function):
    """y = exp(x - max) / sum(exp(x - max)) along ``dim``.

    gx = y * (gy - sum(gy * y)) along ``dim`` (the Jacobian diag(y) - y y^T
    applied to gy).
    """

    def forward(self, x, dim):
        xp = get_array_module(x)
        e = xp.exp(x - x.max(axis=dim, keepdims=True))   # largest exponent is 0: no overflow
        y = e / e.sum(axis=dim, keepdims=True)
        if self.needs_input_grad[0]:
            self.y, self.dim = y, dim
        return y

    def backward(self, gy):
        return self.y * (gy - (gy * self.y).sum(axis=self.dim, keepdims=True))


class LogSoftmax(Function):
    """y = x - max - log(sum(exp(x - max))) along ``dim``.

    gx = gy - softmax(x) * sum(gy) along ``dim``, with softmax(x) = exp(y).
    """

    def forward(self, x, dim):
        xp = get_array_module(x)
        shifted = x - x.max(axis=dim, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        if self.needs_input_grad[0]:
            self.y, self.dim = y, dim
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.dim, keepdims=True)


def softmax(x, dim=-1):
    """Softmax along ``dim`` (numerically stable: the max is subtracted first)."""
    check_float(x, "softmax")
    return Softmax.apply(x, dim=_check_dim(x, dim, "softmax"))


def log_softmax(x, dim=-1):
    """log(softmax(x)) along ``dim``, computed without forming softmax's log."""
    check_float(x, "log_softmax")
    return LogSoftmax.apply(x, dim=_check_dim(x, dim, "log_softmax"))


def _check_dim(x, dim, op):
    """``dim`` as a non-negative axis of ``x``."""
    ndim = x.ndim
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"{op}: dim {dim!r} is out of range for an input of shape "
                         f"{tuple(x.shape)}")
    return dim % ndim
