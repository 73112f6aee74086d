"""Every gradient has its tensor's dtype: a float32 network back-propagates in float32.

A float64 gradient reaching a float32 tensor is wrong twice on a GPU: CuPy's
elementwise kernels refuse the mix (the ReLU gradient), and a raw kernel
compiled for the input's dtype reads the float64 buffer as float32 (the LRN
backward): silent garbage. So the engine refuses it (``run_backward`` checks
every gradient an op returns) and this property test runs every op of the
engine, in float32 and float64, with the fast paths on and off, and checks the
gradient of every input.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinygnet as tg
import tinygnet.functional as F
from tinygnet import dispatch
from tinygnet.tensor import Function

TARGETS = np.array([0, 3, 1, 2, 0, 1])


def positive(r, *shape):
    return r.uniform(0.5, 2.0, shape)


def shuffled(r, *shape):
    """Distinct values: no ties for the maxima, none at ReLU's kink."""
    size = int(np.prod(shape))
    return (r.permutation(size) - size / 2 + 0.5).reshape(shape) / size


# The reference op (a Function class): (function of Tensors, builder of its float64
# inputs from (rng, n), every one of which needs a gradient).
CASES = {
    "Add": (lambda a, b: a + b, lambda r, n: [r.standard_normal((n, 3)), r.standard_normal(3)]),
    "Sub": (lambda a, b: a - b, lambda r, n: [r.standard_normal((n, 3)), r.standard_normal(3)]),
    "Mul": (lambda a, b: a * b, lambda r, n: [r.standard_normal((n, 3)), r.standard_normal(3)]),
    "Div": (lambda a, b: a / b, lambda r, n: [r.standard_normal((n, 3)), positive(r, 3)]),
    "Neg": (lambda a: -a, lambda r, n: [r.standard_normal((n, 3))]),
    "Pow": (lambda a: a ** 3, lambda r, n: [r.standard_normal((n, 3))]),
    "Exp": (lambda a: a.exp(), lambda r, n: [r.standard_normal((n, 3))]),
    "Log": (lambda a: a.log(), lambda r, n: [positive(r, n, 3)]),
    "MatMul": (lambda a, b: a @ b, lambda r, n: [r.standard_normal((n, 3)),
                                                 r.standard_normal((3, 2))]),
    "GetItem": (lambda a: a[1:, ::2], lambda r, n: [r.standard_normal((n + 1, 5))]),
    "Sum": (lambda a: a.sum(dim=1), lambda r, n: [r.standard_normal((n, 3))]),
    "Mean": (lambda a: a.mean(dim=0), lambda r, n: [r.standard_normal((n, 3))]),
    "Max": (lambda a: a.max(dim=1), lambda r, n: [shuffled(r, n, 4)]),
    "Reshape": (lambda a: a.reshape(-1), lambda r, n: [r.standard_normal((n, 3))]),
    "Permute": (lambda a: a.permute(1, 0), lambda r, n: [r.standard_normal((n, 3))]),
    # There and back: the gradient returns in the input's dtype.
    "Convert": (lambda a: a.to(dtype=np.float32 if a.dtype == np.float64 else np.float64),
                lambda r, n: [r.standard_normal((n, 3))]),
    "ReLU": (F.relu, lambda r, n: [shuffled(r, n, 3, 4, 4)]),
    "Dropout": (lambda a: F.dropout(a, 0.5, training=True),
                lambda r, n: [r.standard_normal((n, 6))]),
    "Softmax": (lambda a: F.softmax(a, dim=1), lambda r, n: [r.standard_normal((n, 5))]),
    "LogSoftmax": (lambda a: F.log_softmax(a, dim=1), lambda r, n: [r.standard_normal((n, 5))]),
    "Conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
               lambda r, n: [r.standard_normal((n, 3, 7, 6)), r.standard_normal((4, 3, 3, 3)),
                             r.standard_normal(4)]),
    "Linear": (F.linear, lambda r, n: [r.standard_normal((n, 4)), r.standard_normal((2, 4)),
                                       r.standard_normal(2)]),
    "CrossEntropy": (lambda a: F.cross_entropy(a, TARGETS[:a.shape[0]], label_smoothing=0.1),
                     lambda r, n: [r.standard_normal((n, 4))]),
    "NLLLoss": (lambda a: F.nll_loss(a, TARGETS[:a.shape[0]]),
                lambda r, n: [r.standard_normal((n, 4))]),
    "LocalResponseNorm": (lambda x: F.local_response_norm(x, 5, alpha=0.5, beta=0.75, k=2.0),
                          lambda r, n: [r.standard_normal((n, 7, 3, 4))]),
    "BatchNorm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                  lambda r, n: [r.standard_normal((n + 1, 3, 2, 3)), positive(r, 3),
                                r.standard_normal(3)]),
    "MaxPool2d": (lambda x: F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True),
                  lambda r, n: [shuffled(r, n, 2, 8, 7)]),
    "AvgPool2d": (lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
                  lambda r, n: [r.standard_normal((n, 2, 8, 7))]),
    "GlobalAvgPool2d": (lambda x: F.adaptive_avg_pool2d(x, 1),
                        lambda r, n: [r.standard_normal((n, 2, 4, 5))]),
    "Cat": (lambda a, b: F.cat([a, b], dim=1),
            lambda r, n: [r.standard_normal((n, 1, 3)), r.standard_normal((n, 2, 3))]),
}


def reference_ops():
    """Every Function subclass of the engine that is not a fast path."""
    fast = {fast for _, _, fast in dispatch.fast_paths()}
    found, todo = set(), list(Function.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls not in fast and cls.__module__.startswith("tinygnet."):
            found.add(cls.__name__)
    return found


def test_every_op_has_a_case():
    assert reference_ops() == set(CASES)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=5)
@given(n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_every_gradient_has_its_tensors_dtype(name, dtype, fast, n, seed):
    fn, build = CASES[name]
    r = np.random.default_rng(seed)
    inputs = [tg.tensor(a.astype(dtype), requires_grad=True) for a in build(r, n)]
    with tg.use_fast(fast):
        y = fn(*inputs)
        gy = r.standard_normal(y.shape).astype(y.dtype)
        y.backward(tg.tensor(gy))        # run_backward checks every op's gradients
    for i, x in enumerate(inputs):
        assert x.grad.dtype == x.dtype, f"input {i}: a {x.grad.dtype} gradient of a {x.dtype} tensor"


class Float64Backward(Function):
    """y = 2x whose backward returns float64 whatever x is."""

    def forward(self, x):
        return x * 2

    def backward(self, gy):
        return gy.astype(np.float64) * 2


def test_the_engine_refuses_a_gradient_of_another_dtype():
    x = tg.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(RuntimeError, match="Float64Backward.backward returned a float64 gradient "
                                           "for a float32 input"):
        (Float64Backward.apply(x) * 3).sum().backward()


# float16: every op whose GPU path is a CUDA kernel (compiled for float and double
# only) refuses it in one line, on either device, rather than a KeyError from the
# kernel table at the first launch on the GPU.
HALF_OPS = {
    "conv2d": lambda x: F.conv2d(x, x[:2]),
    "max_pool2d": lambda x: F.max_pool2d(x, 2),
    "avg_pool2d": lambda x: F.avg_pool2d(x, 2),
    "local_response_norm": lambda x: F.local_response_norm(x, 3),
    "batch_norm": lambda x: F.batch_norm(x, None, None, training=True),
    "cross_entropy": lambda x: F.cross_entropy(x.reshape(4, -1), TARGETS[:4]),
}


@pytest.mark.parametrize("op", HALF_OPS)
def test_float16_is_refused_in_one_line(op):
    x = tg.tensor(np.ones((4, 2, 4, 4), dtype=np.float16))
    with pytest.raises(TypeError, match=rf"^{op}: .*float32 or float64.*got float16$"):
        HALF_OPS[op](x)


def test_the_cuda_kernels_name_the_dtypes_they_are_compiled_for():
    from tinygnet.kernels import cuda_kernels
    with pytest.raises(TypeError, match="compiled for float32 and float64, not float16"):
        cuda_kernels.raw_source("im2col", np.float16)
