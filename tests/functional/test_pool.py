"""Pooling against plain loop references that mirror PyTorch's CPU kernels."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import tinygnet as tg
from tinygnet.functional.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d

# Every op here is linear (or piecewise linear away from kinks) in each input, so
# central differences in float64 are exact up to rounding: tight tolerances.
TOL = dict(atol=1e-6, rtol=1e-6)


def output_size(size, kernel, stride, padding, ceil_mode):
    """PyTorch's rule, written from its documentation."""
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding((size + 2 * padding - kernel) / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def max_pool_reference(x, K, S, P, ceil_mode, gy=None):
    """Max of each window (padding ignored) and, given gy, the gradient routed to
    the first max in row-major order of the window."""
    (KH, KW), (SH, SW), (PH, PW) = K, S, P
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH, ceil_mode), output_size(W, KW, SW, PW, ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    gx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    best, where = -np.inf, None
                    for i in range(oh * SH - PH, oh * SH - PH + KH):
                        for j in range(ow * SW - PW, ow * SW - PW + KW):
                            if 0 <= i < H and 0 <= j < W and x[n, c, i, j] > best:
                                best, where = x[n, c, i, j], (i, j)
                    y[n, c, oh, ow] = best
                    if gy is not None:
                        gx[n, c, where[0], where[1]] += gy[n, c, oh, ow]
    return y, gx


def avg_pool_reference(x, K, S, P, ceil_mode, count_include_pad):
    """A transcription of PyTorch's avg_pool2d CPU kernel, one output at a time."""
    (KH, KW), (SH, SW), (PH, PW) = K, S, P
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH, ceil_mode), output_size(W, KW, SW, PW, ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    hstart, wstart = oh * SH - PH, ow * SW - PW
                    hend, wend = min(hstart + KH, H + PH), min(wstart + KW, W + PW)
                    pool_size = (hend - hstart) * (wend - wstart)
                    hstart, wstart = max(hstart, 0), max(wstart, 0)
                    hend, wend = min(hend, H), min(wend, W)
                    total = x[n, c, hstart:hend, wstart:wend].sum()
                    divisor = pool_size if count_include_pad else (hend - hstart) * (wend - wstart)
                    y[n, c, oh, ow] = total / divisor
    return y


def shuffled_linspace(rng, shape):
    """Distinct values at least 0.1 apart, shuffled: no ties, max pool has no kinks."""
    values = np.linspace(-1, 1, int(np.prod(shape))) * 0.05 * np.prod(shape)
    return rng.permutation(values).reshape(shape)


def pairs(*values):
    return [(v, v) if isinstance(v, int) else v for v in values]


POOL_CASES = [  # H, W, kernel, stride, padding, ceil_mode
    (6, 6, 2, None, 0, False),
    (7, 7, 3, 2, 0, True),          # ceil_mode adds a partial window
    (7, 6, 3, 2, 1, True),
    (5, 5, 3, 1, 1, False),         # GoogLeNet's branch pool: keeps the size
    (6, 5, (3, 2), (2, 1), (1, 0), False),
    (5, 8, 2, 3, 1, True),          # stride > kernel
    (1, 1, 1, 1, 0, False),         # 1x1 input
    (1, 1, 2, 2, 1, False),         # 1x1 input, padding of half the kernel
    (4, 4, 4, 3, 2, True),          # ceil window starting in the padding
    (5, 4, 2, 2, 0, True),
]


@pytest.mark.parametrize("H, W, kernel, stride, padding, ceil_mode", POOL_CASES)
def test_max_pool_matches_loops(rng, H, W, kernel, stride, padding, ceil_mode):
    x = shuffled_linspace(rng, (2, 3, H, W))
    K, S, P = pairs(kernel, kernel if stride is None else stride, padding)
    expected, _ = max_pool_reference(x, K, S, P, ceil_mode)
    y = max_pool2d(tg.tensor(x), kernel, stride, padding, ceil_mode)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y.numpy(), expected)
    xt = tg.tensor(x, requires_grad=True)
    tg.gradcheck(lambda x: max_pool2d(x, kernel, stride, padding, ceil_mode), [xt], **TOL)


@pytest.mark.parametrize("H, W, kernel, stride, padding, ceil_mode", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_matches_loops(rng, H, W, kernel, stride, padding, ceil_mode, count_include_pad):
    x = rng.standard_normal((2, 3, H, W))
    K, S, P = pairs(kernel, kernel if stride is None else stride, padding)
    expected = avg_pool_reference(x, K, S, P, ceil_mode, count_include_pad)
    y = avg_pool2d(tg.tensor(x), kernel, stride, padding, ceil_mode, count_include_pad)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-14)
    xt = tg.tensor(x, requires_grad=True)
    tg.gradcheck(lambda x: avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad),
                 [xt], **TOL)


def test_avg_pool_partial_window_divisors():
    """Width 6, kernel 3, stride 2, padding 1, ceil_mode: windows start at -1, 1, 3, 5.
    The padded input is [-1, 7), so the last window [5, 8) hangs one past it and
    counts 2 positions (the real 5 and the pad 6), or 1 without count_include_pad."""
    x = tg.tensor(np.ones((1, 1, 1, 6)))
    y = avg_pool2d(x, (1, 3), (1, 2), (0, 1), ceil_mode=True, count_include_pad=True)
    np.testing.assert_allclose(y.numpy().ravel(), [2 / 3, 1, 1, 1 / 2])
    y = avg_pool2d(x, (1, 3), (1, 2), (0, 1), ceil_mode=True, count_include_pad=False)
    np.testing.assert_allclose(y.numpy().ravel(), [1, 1, 1, 1])
    x = tg.tensor(np.ones((1, 1, 1, 6)))
    y = avg_pool2d(x, (1, 4), (1, 3), (0, 1), ceil_mode=True, count_include_pad=True)
    # windows [-1,3) [2,6) [5,9) cut to the padded end 7: [5,7) counts 2, holds 1 real 1
    np.testing.assert_allclose(y.numpy().ravel(), [3 / 4, 1, 1 / 2])
    y = avg_pool2d(x, (1, 4), (1, 3), (0, 1), ceil_mode=True, count_include_pad=False)
    np.testing.assert_allclose(y.numpy().ravel(), [1, 1, 1])


def test_max_pool_ties_go_to_the_first_max(rng):
    """Many equal values (integers 0..2): the gradient goes where the loop's first max is."""
    for kernel, stride, padding, ceil_mode in [(3, 1, 1, False), (3, 2, 0, True), (2, 2, 1, False)]:
        x = rng.integers(0, 3, (2, 3, 7, 6)).astype(np.float64)
        gy_shape = max_pool2d(tg.tensor(x), kernel, stride, padding, ceil_mode).shape
        gy = rng.standard_normal(gy_shape)
        K, S, P = pairs(kernel, stride, padding)
        _, expected = max_pool_reference(x, K, S, P, ceil_mode, gy)
        xt = tg.tensor(x, requires_grad=True)
        max_pool2d(xt, kernel, stride, padding, ceil_mode).backward(gy)
        np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-12)
    # a tie between a later column of the first row and the first column of a later row
    x = np.array([[[[0., 5.], [5., 0.]]]])
    xt = tg.tensor(x, requires_grad=True)
    max_pool2d(xt, 2).backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(xt.grad.numpy(), [[[[0, 1], [0, 0]]]])


def test_max_pool_padding_never_wins():
    x = tg.tensor(-np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3) - 100)
    y = max_pool2d(x, 3, 1, 1)
    assert (y.numpy() <= -101).all()


@given(N=st.integers(1, 2), C=st.integers(1, 2), H=st.integers(1, 7), W=st.integers(1, 7),
       KH=st.integers(1, 4), KW=st.integers(1, 4), SH=st.integers(1, 3), SW=st.integers(1, 3),
       PH=st.integers(0, 2), PW=st.integers(0, 2), ceil_mode=st.booleans(),
       count_include_pad=st.booleans(), seed=st.integers(0, 2**16))
def test_property_pools(N, C, H, W, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad, seed):
    assume(PH <= KH // 2 and PW <= KW // 2)
    OH, OW = output_size(H, KH, SH, PH, ceil_mode), output_size(W, KW, SW, PW, ceil_mode)
    assume(OH >= 1 and OW >= 1)
    rng = np.random.default_rng(seed)
    x = shuffled_linspace(rng, (N, C, H, W))
    K, S, P = (KH, KW), (SH, SW), (PH, PW)
    gy = rng.standard_normal((N, C, OH, OW))

    expected, expected_gx = max_pool_reference(x, K, S, P, ceil_mode, gy)
    xt = tg.tensor(x, requires_grad=True)
    y = max_pool2d(xt, K, S, P, ceil_mode)
    np.testing.assert_array_equal(y.numpy(), expected)
    y.backward(gy)
    np.testing.assert_allclose(xt.grad.numpy(), expected_gx, rtol=1e-12)

    expected = avg_pool_reference(x, K, S, P, ceil_mode, count_include_pad)
    y = avg_pool2d(tg.tensor(x), K, S, P, ceil_mode, count_include_pad)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)
    tg.gradcheck(lambda x: avg_pool2d(x, K, S, P, ceil_mode, count_include_pad),
                 [tg.tensor(x, requires_grad=True)], **TOL)


@pytest.mark.parametrize("output_size", [1, (1, 1)])
def test_global_average_pool(rng, output_size):
    x = rng.standard_normal((2, 3, 4, 5))
    y = adaptive_avg_pool2d(tg.tensor(x), output_size)
    np.testing.assert_allclose(y.numpy(), x.mean(axis=(2, 3), keepdims=True), rtol=1e-12)
    tg.gradcheck(lambda x: adaptive_avg_pool2d(x, output_size),
                 [tg.tensor(x, requires_grad=True)], **TOL)


def test_adaptive_avg_pool_dividing_size(rng):
    x = rng.standard_normal((2, 3, 6, 4))
    y = adaptive_avg_pool2d(tg.tensor(x), (3, 2))
    np.testing.assert_allclose(y.numpy(), x.reshape(2, 3, 3, 2, 2, 2).mean(axis=(3, 5)),
                               rtol=1e-12)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: output size 4x2 .* input size 6x4"):
        adaptive_avg_pool2d(tg.tensor(x), (4, 2))


@pytest.mark.parametrize("pool", [
    lambda x: max_pool2d(x, 3, 2, ceil_mode=True),
    lambda x: max_pool2d(x, 3, 1, 1),
    lambda x: avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    lambda x: adaptive_avg_pool2d(x, 1),
])
def test_float32_stays_float32(rng, pool):
    x = tg.tensor(rng.standard_normal((2, 3, 7, 7)).astype(np.float32), requires_grad=True)
    y = pool(x)
    assert y.dtype == np.float32
    y.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert x.grad.dtype == np.float32


def test_googlenet_sizes():
    for size, expected in [(112, 56), (56, 28), (28, 14), (14, 7)]:
        x = tg.tensor(np.zeros((1, 1, size, size), np.float32))
        assert max_pool2d(x, 3, 2, ceil_mode=True).shape == (1, 1, expected, expected)
        assert max_pool2d(x, 3, 1, 1).shape == (1, 1, size, size)


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
def test_bad_arguments(pool):
    name = pool.__name__
    x = tg.tensor(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=rf"{name}: expected a 4-D input \(NCHW\), "
                                         rf"got shape \(3, 5, 5\)"):
        pool(tg.tensor(np.zeros((3, 5, 5), np.float32)), 2)
    with pytest.raises(TypeError, match=rf"{name}: input must be a floating-point .*int64"):
        pool(tg.tensor(np.zeros((2, 3, 5, 5), np.int64)), 2)
    with pytest.raises(ValueError, match=rf"{name}: padding must be >= 0, got \(-1, -1\)"):
        pool(x, 2, padding=-1)
    with pytest.raises(ValueError, match=rf"{name}: stride must be >= 1, got \(0, 0\)"):
        pool(x, 2, stride=0)
    with pytest.raises(ValueError, match=rf"{name}: kernel_size must be >= 1"):
        pool(x, 0)
    with pytest.raises(ValueError, match=rf"{name}: padding \(2, 2\) must be at most half "
                                         rf".*\(3, 3\)"):
        pool(x, 3, padding=2)
    with pytest.raises(ValueError, match=rf"{name}: kernel 6x6 is larger than the padded "
                                         rf"input 5x5"):
        pool(x, 6)


def test_adaptive_bad_arguments():
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: expected a 4-D input .*\(2, 3\)"):
        adaptive_avg_pool2d(tg.tensor(np.zeros((2, 3), np.float32)), 1)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: output_size must be >= 1"):
        adaptive_avg_pool2d(tg.tensor(np.zeros((1, 1, 2, 2), np.float32)), 0)
