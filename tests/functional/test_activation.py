"""relu, dropout, softmax, log_softmax: forward against plain loops, backward by gradcheck."""
import math
import re

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygnet as tg
from tinygnet.functional.activation import dropout, log_softmax, relu, softmax


def away_from_zero(rng, shape, gap=0.1):
    """Distinct values with |x| >= gap, so finite differences never cross ReLU's kink."""
    values = rng.uniform(gap, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return values


def softmax_reference(x, dim):
    """softmax along ``dim`` one row at a time with math.exp."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), dim, -1)
    out = np.empty_like(moved)
    for index in np.ndindex(moved.shape[:-1]):
        row = moved[index]
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        total = sum(exps)
        out[index] = [e / total for e in exps]
    return np.moveaxis(out, -1, dim)


# ----------------------------------------------------------------------- relu
def test_relu_forward_matches_loop(rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    y = relu(tg.tensor(x))
    expected = np.array([v if v > 0 else 0.0 for v in x.ravel()]).reshape(x.shape)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), expected)


def test_relu_gradcheck(rng):
    x = tg.tensor(away_from_zero(rng, (2, 3, 4)), dtype=np.float64, requires_grad=True)
    assert tg.gradcheck(relu, x)


def test_relu_gradient_is_mask(rng):
    x = tg.tensor(away_from_zero(rng, (4, 5)), dtype=np.float64, requires_grad=True)
    gy = rng.standard_normal((4, 5))
    relu(x).backward(gy)
    np.testing.assert_array_equal(x.grad.numpy(), np.where(x.numpy() > 0, gy, 0.0))


# -------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_softmax_and_log_softmax_forward(rng, dim):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    expected = softmax_reference(x, dim)
    y = softmax(tg.tensor(x), dim=dim)
    log_y = log_softmax(tg.tensor(x), dim=dim)
    assert y.dtype == np.float32 and log_y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(log_y.numpy(), np.log(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [softmax, log_softmax])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_gradcheck(rng, fn, dim):
    x = tg.tensor(rng.standard_normal((3, 4, 2)), dtype=np.float64, requires_grad=True)
    assert tg.gradcheck(lambda x: fn(x, dim=dim), x)


def test_softmax_is_stable_for_huge_logits():
    x = tg.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    np.testing.assert_allclose(softmax(x).numpy(), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-6)
    log_y = log_softmax(x).numpy()
    assert np.isfinite(log_y).all()
    np.testing.assert_allclose(log_y, [[0, -2e4, -1e4], [-math.log(3)] * 3], rtol=1e-6)


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data())
def test_softmax_rows_sum_to_one(shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32) * 10
    y = softmax(tg.tensor(x), dim=dim).numpy()
    np.testing.assert_allclose(y.sum(axis=dim), 1.0, rtol=1e-5)
    np.testing.assert_allclose(y, softmax_reference(x, dim), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fn", [softmax, log_softmax])
def test_softmax_bad_input(fn):
    x = tg.tensor(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"dim 2 .*\(2, 3\)"):
        fn(x, dim=2)
    with pytest.raises(TypeError, match="int64"):
        fn(tg.tensor(np.zeros((2, 3), dtype=np.int64)))


# -------------------------------------------------------------------- dropout
def test_dropout_identity_when_eval_or_p_zero(rng):
    x = tg.tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x


def test_dropout_p_one_gives_zeros(rng):
    x = tg.tensor(rng.standard_normal((3, 4)), dtype=np.float64, requires_grad=True)
    y = dropout(x, 1.0)
    np.testing.assert_array_equal(y.numpy(), 0.0)
    y.backward(np.ones((3, 4)))
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)


@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       p=st.floats(0.05, 0.95), seed=st.integers(0, 1000))
def test_dropout_values_are_zero_or_scaled(shape, p, seed):
    tg.manual_seed(seed)
    x = np.random.default_rng(seed).uniform(0.5, 1.5, size=shape).astype(np.float32)
    y = dropout(tg.tensor(x), p).numpy()
    assert y.dtype == np.float32
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)


def test_dropout_mean_and_rate(rng):
    tg.manual_seed(0)
    p = 0.3
    x = tg.tensor(np.ones(200_000, dtype=np.float32))
    y = dropout(x, p).numpy()
    assert abs((y == 0).mean() - p) < 0.01
    assert abs(y.mean() - 1.0) < 0.01      # E[y] = x


def test_dropout_same_seed_same_mask():
    x = tg.tensor(np.ones((8, 16), dtype=np.float32))
    tg.manual_seed(7)
    a = dropout(x, 0.5).numpy()
    tg.manual_seed(7)
    b = dropout(x, 0.5).numpy()
    c = dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_dropout_gradient_uses_the_mask(rng):
    tg.manual_seed(3)
    x = tg.tensor(rng.uniform(0.5, 1.5, (5, 6)), dtype=np.float64, requires_grad=True)
    y = dropout(x, 0.4)
    gy = rng.standard_normal((5, 6))
    y.backward(gy)
    np.testing.assert_allclose(x.grad.numpy(), gy * y.numpy() / x.numpy(), rtol=1e-12)


def test_dropout_gradcheck(rng):
    x = tg.tensor(rng.standard_normal((4, 5)), dtype=np.float64, requires_grad=True)

    def fn(x):
        tg.manual_seed(11)              # the same mask at every evaluation
        return dropout(x, 0.4)
    assert tg.gradcheck(fn, x)


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True])
def test_dropout_bad_p(p):
    x = tg.tensor(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match=re.escape(repr(p))):
        dropout(x, p)
