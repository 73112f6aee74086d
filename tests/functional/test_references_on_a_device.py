"""The reference ops are written for any array module: none hides a host NumPy array.

On a GPU the reference ops run on CuPy arrays (with the fast paths off, or
for the ops that have no GPU fast path). An op that slipped a ``np.arange`` or
a ``np.zeros`` into that code would mix a host array into GPU work, which
CuPy refuses. This test plays that GPU without one: ``DeviceArray`` is a
NumPy array that refuses to meet a host array (in arithmetic, in an array
function, as an index or as a value to store), and ``StandInCuPy`` is the
array module that owns it, installed as ``cupy`` so that
``get_array_module`` hands it to the ops. Every op then runs forward and
backward on device arrays and must give what it gives on the host.
"""
import sys
import types

import numpy as np
import pytest

import tinygnet as tg
import tinygnet.functional as F
from tinygnet.backend import devices


class HostArrayOnTheDevice(TypeError):
    """A host (NumPy) array met a device array."""


def _check(where, values):
    for value in values:
        if isinstance(value, (list, tuple)):
            _check(where, value)
        elif isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
            raise HostArrayOnTheDevice(f"{where}: a host array of shape {value.shape} "
                                       f"met a device array")


def _plain(value):
    if isinstance(value, DeviceArray):
        return value.view(np.ndarray)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _device(value):
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    if isinstance(value, list):
        return [_device(v) for v in value]
    return value


class DeviceArray(np.ndarray):
    """An array "on the GPU": it computes like NumPy but never with host arrays."""

    device = types.SimpleNamespace(id=0)

    def get(self):
        """A host copy, as ``cupy.ndarray.get``."""
        return self.view(np.ndarray).copy()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _check(f"np.{ufunc.__name__}", inputs + tuple(kwargs.get("out", ())))
        if "out" in kwargs:
            kwargs["out"] = _plain(kwargs["out"])
        result = getattr(ufunc, method)(*_plain(inputs), **kwargs)
        return _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        _check(f"np.{func.__name__}", tuple(args) + tuple(kwargs.values()))
        return _device(func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))

    def __getitem__(self, index):
        _check("indexing", index if isinstance(index, tuple) else (index,))
        return _device(super().__getitem__(_plain(index)))

    def __setitem__(self, index, value):
        _check("assignment", (index if isinstance(index, tuple) else (index,)) + (value,))
        super().__setitem__(_plain(index), _plain(value))


class StandInCuPy(types.ModuleType):
    """The array module of DeviceArray: NumPy's functions, on device arrays only.

    ``asarray`` and ``array`` copy host data to the device (as in CuPy);
    every other function refuses host arrays among its arguments.
    """

    ndarray = DeviceArray

    def __getattr__(self, name):
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value                                    # dtypes, constants

        def on_device(*args, **kwargs):
            if name not in ("asarray", "array"):
                _check(f"xp.{name}", tuple(args) + tuple(kwargs.values()))
            return _device(value(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))
        return on_device


@pytest.fixture
def stand_in_gpu(monkeypatch):
    """Install StandInCuPy as ``cupy``; return a function that puts an array on it."""
    monkeypatch.setitem(sys.modules, "cupy", StandInCuPy("cupy"))
    monkeypatch.setattr(devices, "_cupy", devices._cupy)        # restored afterwards
    return lambda array: np.array(array).view(DeviceArray)


def test_the_stand_in_refuses_host_arrays(stand_in_gpu):
    a = stand_in_gpu(np.ones(3))
    with pytest.raises(HostArrayOnTheDevice, match="np.add"):
        a + np.ones(3)
    with pytest.raises(HostArrayOnTheDevice, match="indexing"):
        a[np.arange(2)]
    with pytest.raises(HostArrayOnTheDevice, match="xp.where"):
        sys.modules["cupy"].where(a > 0, np.zeros(3), a)
    assert isinstance(a * 2 + sys.modules["cupy"].zeros(3), DeviceArray)


def shuffled(rng, *shape):
    """Distinct values (no ties for max pooling, none at ReLU's kink)."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) / np.prod(shape) - 0.5


def batch_norm_case(training):
    def run(x, w, b, mean, var):
        return F.batch_norm(x, mean, var, w, b, training=training)
    return run


# name: (function of Tensors, builder of its float64 inputs, how many of them need gradients)
OPS = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1),
               lambda r: [r.standard_normal((2, 3, 7, 6)), r.standard_normal((4, 3, 3, 2)),
                          r.standard_normal(4)], 3),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True),
                   lambda r: [shuffled(r, 2, 3, 8, 7)], 1),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                                          count_include_pad=False),
                   lambda r: [r.standard_normal((2, 3, 8, 7))], 1),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, 1),
                            lambda r: [r.standard_normal((2, 3, 4, 5))], 1),
    "local_response_norm": (lambda x: F.local_response_norm(x, 5, alpha=0.5, beta=0.75, k=2.0),
                            lambda r: [r.standard_normal((2, 7, 3, 4))], 1),
    "batch_norm_train": (batch_norm_case(True),
                              lambda r: [r.standard_normal((4, 3, 2, 3)), r.uniform(0.5, 1.5, 3),
                                         r.standard_normal(3), r.standard_normal(3),
                                         r.uniform(0.5, 2, 3)], 3),
    "batch_norm_eval": (batch_norm_case(False),
                        lambda r: [r.standard_normal((4, 3)), r.uniform(0.5, 1.5, 3),
                                   r.standard_normal(3), r.standard_normal(3),
                                   r.uniform(0.5, 2, 3)], 3),
    "relu": (F.relu, lambda r: [shuffled(r, 3, 4, 5)], 1),
    "softmax": (lambda x: F.softmax(x, dim=1), lambda r: [r.standard_normal((3, 5))], 1),
    "log_softmax": (lambda x: F.log_softmax(x, dim=0), lambda r: [r.standard_normal((3, 5))], 1),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([0, 4, 2, 2]), label_smoothing=0.1),
                      lambda r: [r.standard_normal((4, 5)) * 3], 1),
    "cross_entropy_none": (lambda x: F.cross_entropy(x, np.array([1, 0, 3]), reduction="none"),
                           lambda r: [r.standard_normal((3, 4))], 1),
    "nll_loss": (lambda x: F.nll_loss(F.log_softmax(x, dim=1), np.array([2, 0])),
                 lambda r: [r.standard_normal((2, 3))], 1),
    "linear": (F.linear, lambda r: [r.standard_normal((3, 4)), r.standard_normal((2, 4)),
                                    r.standard_normal(2)], 3),
    "cat_and_flatten": (lambda a, b: F.flatten(F.cat([a, b], dim=1)),
                        lambda r: [r.standard_normal((2, 1, 3)), r.standard_normal((2, 2, 3))], 2),
}


def run(name, make_array):
    """Output, input gradients and any running statistics, as host arrays."""
    fn, build, differentiable = OPS[name]
    arrays = build(np.random.default_rng(0))
    inputs = [tg.Tensor(make_array(a), requires_grad=i < differentiable)
              for i, a in enumerate(arrays)]
    y = fn(*inputs)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(tg.Tensor(make_array(gy)))
    host = [y.numpy()] + [t.grad.numpy() for t in inputs[:differentiable]]
    return host + [t.numpy() for t in inputs[differentiable:]]


@pytest.mark.parametrize("name", OPS)
def test_each_reference_op_runs_on_device_arrays(name, stand_in_gpu):
    on_host = run(name, np.array)
    on_device = run(name, stand_in_gpu)
    assert len(on_device) == len(on_host)
    for got, want in zip(on_device, on_host):
        assert type(got) is np.ndarray
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
