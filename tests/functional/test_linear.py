"""linear: forward against plain loops, backward by gradcheck."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygnet as tg
from tinygnet.functional.linear import linear


def t64(array, grad=True):
    return tg.tensor(array, dtype=np.float64, requires_grad=grad)


def linear_reference(x, W, b):
    """y[n, o] = sum_i x[n, i] * W[o, i] + b[o], with plain loops over a (N, in) input."""
    N, (out, inp) = x.shape[0], W.shape
    y = np.zeros((N, out))
    for n in range(N):
        for o in range(out):
            y[n, o] = sum(x[n, i] * W[o, i] for i in range(inp)) + (0.0 if b is None else b[o])
    return y


@given(N=st.integers(1, 4), inp=st.integers(1, 5), out=st.integers(1, 5),
       with_bias=st.booleans(), seed=st.integers(0, 100))
def test_linear_matches_loop_and_gradcheck(N, inp, out, with_bias, seed):
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal((N, inp)), rng.standard_normal((out, inp))
    b = rng.standard_normal(out) if with_bias else None
    y = linear(t64(x, False), t64(W, False), None if b is None else t64(b, False))
    np.testing.assert_allclose(y.numpy(), linear_reference(x, W, b), rtol=1e-12, atol=1e-12)
    inputs = [t64(x), t64(W)] + ([t64(b)] if with_bias else [None])
    assert tg.gradcheck(linear, inputs)


def test_linear_extra_leading_dims(rng):
    x, W, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    y = linear(t64(x, False), t64(W, False), t64(b, False))
    np.testing.assert_allclose(y.numpy().reshape(6, 5), linear_reference(x.reshape(6, 4), W, b),
                               rtol=1e-12)
    assert tg.gradcheck(linear, [t64(x), t64(W), t64(b)])


def test_linear_float32(rng):
    x = tg.tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    W = tg.tensor(rng.standard_normal((2, 4)).astype(np.float32), requires_grad=True)
    b = tg.tensor(rng.standard_normal(2).astype(np.float32), requires_grad=True)
    y = linear(x, W, b)
    assert y.dtype == np.float32
    y.backward(np.ones((3, 2), dtype=np.float32))
    assert x.grad.dtype == W.grad.dtype == b.grad.dtype == np.float32


def test_linear_bad_input():
    x = tg.tensor(np.zeros((3, 4), dtype=np.float32))
    W = tg.tensor(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"input of shape \(3, 5\) does not match weight of shape \(2, 4\)"):
        linear(tg.tensor(np.zeros((3, 5), dtype=np.float32)), W)
    with pytest.raises(ValueError, match=r"weight must be 2-D.*got shape \(4,\)"):
        linear(x, tg.tensor(np.zeros(4, dtype=np.float32)))
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\).*\(2, 4\), got \(3,\)"):
        linear(x, W, tg.tensor(np.zeros(3, dtype=np.float32)))
    with pytest.raises(TypeError, match="weight is float64 but the input is float32"):
        linear(x, tg.tensor(np.zeros((2, 4))))
