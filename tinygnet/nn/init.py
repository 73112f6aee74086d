"""Weight initialisation, reproducible through ``tinygnet.manual_seed``.

Every random draw comes from the host generator (``backend.default_generator``)
in float32 and is then cast to the tensor's dtype and copied to its device, so
one seed gives the same network whatever dtype or device it lives on.

Why He (Kaiming) initialisation: in a stack of conv + ReLU layers, a weight
variance of ``2 / fan_in`` keeps the variance of the activations the same
from layer to layer (ReLU zeroes half of them, the factor 2 makes up for it).
GoogLeNet without batch norm has up to 22 such layers in a row; a smaller
variance makes the signal shrink with depth, a larger one makes it blow up.
``fan_in = in_channels * KH * KW`` for a conv weight, ``in_features`` for a
linear one.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend

__all__ = ["calculate_fan_in_and_fan_out", "calculate_gain", "kaiming_normal_",
           "xavier_uniform_", "normal_", "uniform_", "constant_", "zeros_", "ones_"]


def calculate_fan_in_and_fan_out(shape) -> tuple:
    """Fans of a weight of shape (out, in) or (out, in, KH, KW)."""
    if len(shape) < 2:
        raise ValueError(f"init: fan in/out need a weight with at least 2 dims, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str) -> float:
    """The factor that keeps variance through ``nonlinearity``: sqrt(2) for ReLU, 1 for none."""
    gains = {"relu": math.sqrt(2.0), "linear": 1.0}
    if nonlinearity not in gains:
        raise ValueError(f"init: unknown nonlinearity {nonlinearity!r}; expected one of {sorted(gains)}")
    return gains[nonlinearity]


def _fill(tensor, values) -> None:
    """Copy host float32 ``values`` into ``tensor`` keeping its dtype and device."""
    xp = backend.get_array_module(tensor.data)
    tensor.data[...] = xp.asarray(values.astype(tensor.dtype, copy=False))


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    """Fill with draws from N(mean, std^2)."""
    rng = backend.default_generator()
    values = rng.standard_normal(tensor.shape, dtype=np.float32) * np.float32(std) + np.float32(mean)
    _fill(tensor, values)
    return tensor


def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    """Fill with draws from U(a, b)."""
    rng = backend.default_generator()
    _fill(tensor, rng.uniform(a, b, size=tensor.shape).astype(np.float32))
    return tensor


def kaiming_normal_(tensor, nonlinearity: str = "relu"):
    """He et al. (2015): N(0, gain^2 / fan_in); gain sqrt(2) before a ReLU, 1 before nothing."""
    fan_in, _ = calculate_fan_in_and_fan_out(tensor.shape)
    return normal_(tensor, 0.0, calculate_gain(nonlinearity) / math.sqrt(fan_in))


def xavier_uniform_(tensor, gain: float = 1.0):
    """Glorot & Bengio (2010): U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def constant_(tensor, value: float):
    tensor.data[...] = value
    return tensor


def zeros_(tensor):
    tensor.data[...] = 0
    return tensor


def ones_(tensor):
    tensor.data[...] = 1
    return tensor
