"""Initialisation: the documented distributions, reproducible through manual_seed."""
import math

import numpy as np
import pytest

import tinygnet
from tinygnet import nn
from tinygnet.nn import init


def test_fans_of_conv_and_linear_weights():
    assert init.calculate_fan_in_and_fan_out((64, 3, 7, 7)) == (3 * 49, 64 * 49)
    assert init.calculate_fan_in_and_fan_out((10, 20)) == (20, 10)
    with pytest.raises(ValueError, match="at least 2 dims"):
        init.calculate_fan_in_and_fan_out((5,))


def test_conv_and_linear_are_he_normal_with_zero_bias():
    tinygnet.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3)
    w = conv.weight.numpy()
    expected_std = math.sqrt(2.0 / (64 * 9))
    assert abs(w.std() / expected_std - 1) < 0.02      # 73,728 draws: std error ~0.3%
    assert abs(w.mean()) < 4 * expected_std / math.sqrt(w.size)
    assert (conv.bias.numpy() == 0).all()
    fc = nn.Linear(500, 400)
    assert abs(fc.weight.numpy().std() / math.sqrt(2.0 / 500) - 1) < 0.02
    fc.reset_parameters(nonlinearity="linear")
    assert abs(fc.weight.numpy().std() / math.sqrt(1.0 / 500) - 1) < 0.02
    with pytest.raises(ValueError, match="unknown nonlinearity 'tanh'"):
        fc.reset_parameters(nonlinearity="tanh")


def test_xavier_uniform_bounds():
    tinygnet.manual_seed(0)
    w = nn.Linear(30, 50).weight
    init.xavier_uniform_(w)
    bound = math.sqrt(6 / 80)
    assert np.abs(w.numpy()).max() <= bound and np.abs(w.numpy()).max() > 0.95 * bound


def test_manual_seed_reproduces_weights_in_every_dtype():
    tinygnet.manual_seed(7)
    a = nn.Conv2d(3, 4, 3).weight.numpy()
    tinygnet.manual_seed(7)
    b = nn.Conv2d(3, 4, 3).to(dtype=np.float64).weight.numpy()
    tinygnet.manual_seed(8)
    c = nn.Conv2d(3, 4, 3).weight.numpy()
    assert b.dtype == np.float64
    np.testing.assert_array_equal(a.astype(np.float64), b)
    assert not np.array_equal(a, c)
