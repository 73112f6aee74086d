"""local_response_norm and batch_norm: forward against plain loops, backward by gradcheck."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygnet as tg
from tinygnet.functional.norm import batch_norm, local_response_norm


def t64(array, grad=True):
    return tg.tensor(array, dtype=np.float64, requires_grad=grad)


# ------------------------------------------------------------------------ LRN
def lrn_reference(x, size, alpha, beta, k):
    """PyTorch's formula, one value at a time: the window is c - size//2 .. c + (size-1)//2."""
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape[:2]
    y = np.empty_like(x)
    for n in range(N):
        for c in range(C):
            total = np.zeros(x.shape[2:])
            for c2 in range(c - size // 2, c + (size - 1) // 2 + 1):
                if 0 <= c2 < C:
                    total += x[n, c2] ** 2
            y[n, c] = x[n, c] * (k + alpha / size * total) ** -beta
    return y


lrn_shapes = st.tuples(st.integers(1, 2), st.integers(1, 7), st.integers(1, 3), st.integers(1, 3))


@given(shape=lrn_shapes, size=st.integers(1, 9), alpha=st.floats(0.01, 3.0),
       beta=st.floats(0.1, 1.5), k=st.floats(0.5, 3.0), seed=st.integers(0, 100))
def test_lrn_matches_loop_and_gradcheck(shape, size, alpha, beta, k, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    y = local_response_norm(t64(x, grad=False), size, alpha, beta, k)
    np.testing.assert_allclose(y.numpy(), lrn_reference(x, size, alpha, beta, k), rtol=1e-12)
    assert tg.gradcheck(lambda x: local_response_norm(x, size, alpha, beta, k), t64(x))


@pytest.mark.parametrize("size", [1, 2, 4, 5, 12])   # odd, even, larger than C
def test_lrn_float32(rng, size):
    x = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)
    y = local_response_norm(tg.tensor(x), size, alpha=1.0, beta=0.75, k=2.0)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), lrn_reference(x, size, 1.0, 0.75, 2.0), rtol=1e-5)


def test_lrn_default_constants_and_3d_input(rng):
    x = rng.standard_normal((2, 5, 7)) * 30         # (N, C, L): large enough that alpha matters
    y = local_response_norm(t64(x, grad=False), 5)
    np.testing.assert_allclose(y.numpy(), lrn_reference(x, 5, 1e-4, 0.75, 1.0), rtol=1e-12)
    assert tg.gradcheck(lambda x: local_response_norm(x, 5), t64(x))


def test_lrn_bad_input():
    x = tg.tensor(np.ones((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="size must be a positive int, got 0"):
        local_response_norm(x, 0)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        local_response_norm(tg.tensor(np.ones((2, 3), dtype=np.float32)), 3)
    with pytest.raises(TypeError, match="int32"):
        local_response_norm(tg.tensor(np.ones((1, 2, 2), dtype=np.int32)), 3)


# ----------------------------------------------------------------- batch norm
def batch_norm_reference(x, mean_run, var_run, weight, bias, training, momentum, eps):
    """Channel by channel with plain loops. Returns y, new running mean, new running var."""
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[1]
    y = np.empty_like(x)
    new_mean, new_var = list(mean_run), list(var_run)
    for c in range(C):
        values = [float(v) for v in x[:, c].ravel()]
        m = len(values)
        if training:
            mean = sum(values) / m
            var = sum((v - mean) ** 2 for v in values) / m
            new_mean[c] = (1 - momentum) * mean_run[c] + momentum * mean
            new_var[c] = (1 - momentum) * var_run[c] + momentum * var * m / (m - 1)
        else:
            mean, var = mean_run[c], var_run[c]
        w = 1.0 if weight is None else weight[c]
        b = 0.0 if bias is None else bias[c]
        y[:, c] = (x[:, c] - mean) / math.sqrt(var + eps) * w + b
    return y, np.array(new_mean), np.array(new_var)


bn_shapes = st.one_of(
    st.tuples(st.integers(2, 5), st.integers(1, 4)),
    st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)))


@given(shape=bn_shapes, training=st.booleans(), affine=st.booleans(),
       momentum=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_batch_norm_matches_loop_and_gradcheck(shape, training, affine, momentum, seed):
    if training and np.prod(shape) // shape[1] < 2:
        shape = (2,) + shape[1:]
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    mean_run, var_run = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    weight = rng.uniform(0.5, 2.0, C) if affine else None
    bias = rng.standard_normal(C) if affine else None
    eps = 1e-3
    expected = batch_norm_reference(x, mean_run, var_run, weight, bias, training, momentum, eps)

    running_mean, running_var = t64(mean_run, grad=False), t64(var_run, grad=False)
    mean_array = running_mean.data
    y = batch_norm(t64(x, grad=False), running_mean, running_var,
                   None if weight is None else t64(weight, grad=False),
                   None if bias is None else t64(bias, grad=False),
                   training=training, momentum=momentum, eps=eps)
    np.testing.assert_allclose(y.numpy(), expected[0], rtol=1e-10, atol=1e-10)
    assert running_mean.data is mean_array                    # updated in place
    np.testing.assert_allclose(running_mean.numpy(), expected[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(running_var.numpy(), expected[2], rtol=1e-12, atol=1e-12)

    inputs = [t64(x)] + ([t64(weight), t64(bias)] if affine else [None, None])
    def fn(x, w, b):
        # fresh running stats each call: gradcheck evaluates fn many times
        return batch_norm(x, t64(mean_run, False), t64(var_run, False), w, b,
                          training=training, momentum=momentum, eps=eps)
    assert tg.gradcheck(fn, inputs)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("grads", [(True, False, False), (False, True, False), (False, False, True)])
def test_batch_norm_gradient_for_one_input_at_a_time(rng, training, grads):
    x, w, b = rng.standard_normal((3, 2, 2, 2)), rng.uniform(0.5, 2, 2), rng.standard_normal(2)
    inputs = [t64(a, g) for a, g in zip((x, w, b), grads)]
    assert tg.gradcheck(lambda x, w, b: batch_norm(x, t64(np.zeros(2), False),
                                                   t64(np.ones(2), False), w, b,
                                                   training=training), inputs)


def test_batch_norm_float32_and_no_running_stats(rng):
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    running_mean = tg.tensor(np.zeros(3, dtype=np.float32))
    running_var = tg.tensor(np.ones(3, dtype=np.float32))
    w = tg.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    b = tg.tensor(np.zeros(3, dtype=np.float32), requires_grad=True)
    xt = tg.tensor(x, requires_grad=True)
    y = batch_norm(xt, running_mean, running_var, w, b, training=True)
    assert y.dtype == np.float32 and running_mean.dtype == np.float32
    assert running_var.dtype == np.float32
    y.backward(np.ones_like(x))
    assert xt.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32
    np.testing.assert_allclose(y.numpy().mean(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(y.numpy().var(axis=(0, 2, 3)), 1, rtol=1e-3)
    # training without running statistics, as PyTorch allows
    y2 = batch_norm(tg.tensor(x), None, None, training=True)
    np.testing.assert_allclose(y2.numpy(), y.numpy(), rtol=1e-6, atol=1e-6)
    # float64 running statistics with a float32 input: the output stays float32
    y3 = batch_norm(tg.tensor(x), tg.tensor(np.zeros(3)), tg.tensor(np.ones(3)), training=False)
    assert y3.dtype == np.float32


def test_batch_norm_bad_input():
    x = tg.tensor(np.ones((2, 3, 4, 4), dtype=np.float32))
    stats = tg.tensor(np.zeros(3, dtype=np.float32)), tg.tensor(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\).*\(2, 3, 4, 4\), got \(4,\)"):
        batch_norm(x, *stats, weight=tg.tensor(np.ones(4, dtype=np.float32)))
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\).*got \(2,\)"):
        batch_norm(x, stats[0], tg.tensor(np.ones(2, dtype=np.float32)))
    with pytest.raises(ValueError, match="evaluation mode"):
        batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match=r"more than one value per channel.*\(1, 3\)"):
        batch_norm(tg.tensor(np.ones((1, 3), dtype=np.float32)), *stats, training=True)
    with pytest.raises(ValueError, match=r"2 or more dims.*\(3,\)"):
        batch_norm(tg.tensor(np.ones(3, dtype=np.float32)), *stats)
    with pytest.raises(TypeError, match="bias is float64 but the input is float32"):
        batch_norm(x, *stats, bias=tg.tensor(np.zeros(3)))
    with pytest.raises(ValueError, match="momentum must be in .* got 1.5"):
        batch_norm(x, *stats, training=True, momentum=1.5)
