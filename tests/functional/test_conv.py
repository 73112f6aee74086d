"""conv2d against a plain loop reference, gradients by finite differences."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import tinygnet as tg
from tinygnet.functional.conv import conv2d

# Every op here is linear (or piecewise linear away from kinks) in each input, so
# central differences in float64 are exact up to rounding: tight tolerances.
TOL = dict(atol=1e-6, rtol=1e-6)


def conv2d_reference(x, w, b=None, stride=(1, 1), padding=(0, 0)):
    """The definition, one output element at a time."""
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    (SH, SW), (PH, PW) = stride, padding
    x_pad = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=x.dtype)
    x_pad[:, :, PH:PH + H, PW:PW + W] = x
    OH = (H + 2 * PH - KH) // SH + 1
    OW = (W + 2 * PW - KW) // SW + 1
    y = np.zeros((N, O, OH, OW), dtype=x.dtype)
    for n in range(N):
        for o in range(O):
            for oh in range(OH):
                for ow in range(OW):
                    patch = x_pad[n, :, oh * SH:oh * SH + KH, ow * SW:ow * SW + KW]
                    y[n, o, oh, ow] = (patch * w[o]).sum() + (b[o] if b is not None else 0)
    return y


def make(rng, N, C, O, H, W, KH, KW, dtype=np.float64):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    return x, w, b


CASES = [  # N, C, O, H, W, KH, KW, stride, padding
    (2, 3, 4, 5, 5, 3, 3, 1, 1),
    (2, 3, 4, 6, 7, 3, 3, 2, 1),
    (1, 2, 3, 7, 5, 5, 5, 1, 2),
    (2, 4, 3, 4, 4, 1, 1, 1, 0),          # 1x1: the plain-GEMM path
    (2, 4, 3, 5, 6, 1, 1, 2, 0),          # 1x1 with a stride: im2col path
    (1, 2, 2, 5, 7, 2, 3, (2, 1), (0, 1)),
    (1, 1, 1, 1, 1, 1, 1, 1, 0),          # 1x1 input
    (1, 2, 2, 1, 1, 3, 3, 1, 1),          # 1x1 input, padding of half the kernel
    (3, 2, 5, 4, 4, 4, 4, 1, 0),          # kernel as large as the input
]


@pytest.mark.parametrize("N, C, O, H, W, KH, KW, stride, padding", CASES)
def test_forward_matches_loops(rng, N, C, O, H, W, KH, KW, stride, padding):
    x, w, b = make(rng, N, C, O, H, W, KH, KW)
    pair = lambda v: (v, v) if isinstance(v, int) else v
    expected = conv2d_reference(x, w, b, pair(stride), pair(padding))
    y = conv2d(tg.tensor(x), tg.tensor(w), tg.tensor(b), stride=stride, padding=padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-12)
    y_no_bias = conv2d(tg.tensor(x), tg.tensor(w), stride=stride, padding=padding)
    np.testing.assert_allclose(y_no_bias.numpy(), expected - b.reshape(1, -1, 1, 1),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("N, C, O, H, W, KH, KW, stride, padding", CASES)
def test_gradients(rng, N, C, O, H, W, KH, KW, stride, padding):
    x, w, b = make(rng, N, C, O, H, W, KH, KW)
    inputs = [tg.tensor(a, requires_grad=True) for a in (x, w, b)]
    tg.gradcheck(lambda x, w, b: conv2d(x, w, b, stride=stride, padding=padding), inputs,
                 **TOL)


def test_gradients_of_some_inputs_only(rng):
    """Inputs that need no gradient are skipped; the others' gradients are unchanged."""
    x, w, b = make(rng, 2, 3, 4, 5, 5, 3, 3)
    gy = rng.standard_normal((2, 4, 3, 3))
    full = [tg.tensor(a, requires_grad=True) for a in (x, w, b)]
    conv2d(*full, stride=2, padding=1).backward(gy)
    for needs in [(True, False, False), (False, True, False), (False, False, True)]:
        part = [tg.tensor(a, requires_grad=r) for a, r in zip((x, w, b), needs)]
        conv2d(*part, stride=2, padding=1).backward(gy)
        for t, f, r in zip(part, full, needs):
            if r:
                np.testing.assert_allclose(t.grad.numpy(), f.grad.numpy(), rtol=1e-12)
            else:
                assert t.grad is None


def test_non_contiguous_input(rng):
    x, w, b = make(rng, 2, 3, 4, 6, 5, 3, 3)
    x_t = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)   # same values
    assert not x_t.flags.c_contiguous
    for padding in (0, 1):
        y = conv2d(tg.Tensor(x_t), tg.tensor(w), tg.tensor(b), padding=padding)
        np.testing.assert_allclose(y.numpy(), conv2d_reference(x, w, b, padding=(padding,) * 2),
                                   rtol=1e-10)
    w1 = rng.standard_normal((4, 3, 1, 1))
    y = conv2d(tg.Tensor(x_t), tg.tensor(w1))
    np.testing.assert_allclose(y.numpy(), conv2d_reference(x, w1), rtol=1e-10)


@given(N=st.integers(1, 2), C=st.integers(1, 3), O=st.integers(1, 3),
       H=st.integers(1, 6), W=st.integers(1, 6), KH=st.integers(1, 3), KW=st.integers(1, 3),
       SH=st.integers(1, 3), SW=st.integers(1, 3), PH=st.integers(0, 2), PW=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_property_matches_loops_and_gradcheck(N, C, O, H, W, KH, KW, SH, SW, PH, PW, seed):
    assume(KH <= H + 2 * PH and KW <= W + 2 * PW)
    rng = np.random.default_rng(seed)
    x, w, b = make(rng, N, C, O, H, W, KH, KW)
    y = conv2d(tg.tensor(x), tg.tensor(w), tg.tensor(b), stride=(SH, SW), padding=(PH, PW))
    np.testing.assert_allclose(y.numpy(), conv2d_reference(x, w, b, (SH, SW), (PH, PW)),
                               rtol=1e-10, atol=1e-12)
    inputs = [tg.tensor(a, requires_grad=True) for a in (x, w, b)]
    tg.gradcheck(lambda x, w, b: conv2d(x, w, b, stride=(SH, SW), padding=(PH, PW)), inputs,
                 **TOL)


@pytest.mark.parametrize("K, padding", [(1, 0), (3, 1)])
def test_float32_stays_float32(rng, K, padding):
    x, w, b = make(rng, 2, 3, 4, 5, 5, K, K, dtype=np.float32)
    ts = [tg.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = conv2d(*ts, padding=padding)
    assert y.dtype == np.float32
    y.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert all(t.grad.dtype == np.float32 for t in ts)
    np.testing.assert_allclose(y.numpy(), conv2d_reference(x, w, b, padding=(padding,) * 2),
                               rtol=1e-4, atol=1e-5)


def _tensors(x_shape=(2, 3, 5, 5), w_shape=(4, 3, 3, 3), dtype=np.float32):
    return tg.tensor(np.zeros(x_shape, dtype)), tg.tensor(np.zeros(w_shape, dtype))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x_shape=(3, 5, 5)), ValueError, ["conv2d", "4-D", "NCHW", "(3, 5, 5)"]),
    (dict(w_shape=(4, 3, 3)), ValueError, ["conv2d", "weight", "(4, 3, 3)"]),
    (dict(w_shape=(4, 2, 3, 3)), ValueError, ["conv2d", "3 channels", "expects 2"]),
    (dict(w_shape=(4, 3, 6, 3)), ValueError, ["conv2d", "6x3", "5x5"]),
])
def test_bad_shapes(kwargs, error, words):
    x, w = _tensors(**kwargs)
    with pytest.raises(error) as info:
        conv2d(x, w)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_kernel_larger_than_padded_input_names_both():
    x, w = _tensors((1, 3, 2, 2), (1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"5x5.*4x4"):
        conv2d(x, w, padding=1)
    conv2d(x, tg.tensor(np.zeros((1, 3, 4, 4), np.float32)), padding=1)   # exactly fits


def test_bad_arguments():
    x, w = _tensors()
    with pytest.raises(ValueError, match=r"conv2d: padding must be >= 0, got \(-1, -1\)"):
        conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match=r"conv2d: stride must be >= 1, got \(1, 0\)"):
        conv2d(x, w, stride=(1, 0))
    with pytest.raises(TypeError, match=r"conv2d: stride must be an int or a pair"):
        conv2d(x, w, stride=1.5)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\).*got \(3,\)"):
        conv2d(x, w, tg.tensor(np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\).*got \(1, 4\)"):
        conv2d(x, w, tg.tensor(np.zeros((1, 4), np.float32)))


def test_bad_dtypes():
    x, w = _tensors()
    with pytest.raises(TypeError, match=r"conv2d: input must be a floating-point.*int64"):
        conv2d(tg.tensor(np.zeros((2, 3, 5, 5), np.int64)), w)
    with pytest.raises(TypeError, match=r"conv2d: weight must be a floating-point.*int32"):
        conv2d(x, tg.tensor(np.zeros((4, 3, 3, 3), np.int32)))
    with pytest.raises(TypeError, match=r"input is float32 but weight is float64"):
        conv2d(x, tg.tensor(np.zeros((4, 3, 3, 3))))
    with pytest.raises(TypeError, match=r"input is float32 but bias is float64"):
        conv2d(x, w, tg.tensor(np.zeros(4)))
