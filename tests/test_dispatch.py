"""The dispatch point: which implementation of an op runs, and the use_fast switch."""
import subprocess
import sys

import numpy as np
import pytest

import tinygnet as tg
import tinygnet.functional as F
from tinygnet import dispatch
from tinygnet.functional.activation import ReLU
from tinygnet.functional.conv import Conv2d
from tinygnet.functional.loss import CrossEntropy
from tinygnet.functional.norm import BatchNorm, LocalResponseNorm
from tinygnet.functional.pool import AvgPool2d, MaxPool2d
from tinygnet.kernels import cpu_activation, cpu_conv, cpu_norm, cpu_pool, cuda
from tinygnet.tensor import Function


def grad_fn_class(tensor):
    return type(tensor._ctx)


def conv_output(x, w):
    return F.conv2d(tg.tensor(x, requires_grad=True), tg.tensor(w), padding=1)


def test_the_fast_paths_registered():
    """What the kernels package says it registers (its docstring table) is what is registered."""
    expected = {(Conv2d, "cpu"): cpu_conv.Conv2dOneGemm,
                (MaxPool2d, "cpu"): cpu_pool.MaxPool2dFlatPasses,
                (AvgPool2d, "cpu"): cpu_pool.AvgPool2dFlatPasses,
                (BatchNorm, "cpu"): cpu_norm.BatchNormChunked,
                (ReLU, "cpu"): cpu_activation.ReLUBlocks,
                (Conv2d, "cuda"): cuda.Conv2dCudaIm2col,
                (MaxPool2d, "cuda"): cuda.MaxPool2dCuda,
                (LocalResponseNorm, "cuda"): cuda.LocalResponseNormCuda,
                (ReLU, "cuda"): cuda.ReLUCuda,
                (CrossEntropy, "cuda"): cuda.CrossEntropyCuda}
    registered = {(ref, device): fast for ref, device, fast in dispatch.fast_paths()}
    assert registered == expected
    table = tg.kernels.__doc__
    for (ref, device), fast in registered.items():
        row = f"{ref.__module__.rsplit('.', 1)[1]}.{ref.__name__}"
        assert any(row in line and device in line and fast.__name__ in line
                   for line in table.splitlines()), f"{row} on {device} missing from the table"


@pytest.mark.parametrize("reference, on, fast",
                         [pytest.param(*entry, id=f"{entry[0].__name__}-{entry[1]}")
                          for entry in dispatch.fast_paths()])
def test_a_fast_path_subclasses_its_reference_and_says_what_it_replaces(reference, on, fast):
    assert issubclass(fast, reference) and fast is not reference
    first_line = fast.__doc__.strip().splitlines()[0]
    where = "CPU" if on == "cpu" else "GPU"
    assert first_line.startswith(f"Replaces {reference.__module__.split('.', 1)[1]}.")
    assert f"on the {where}:" in first_line, first_line


def test_cpu_arrays_run_the_cpu_fast_path_and_the_switch_turns_it_off(rng):
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    assert tg.use_fast() is True
    assert grad_fn_class(conv_output(x, w)) is cpu_conv.Conv2dOneGemm
    with tg.use_fast(False):
        assert tg.use_fast() is False
        assert grad_fn_class(conv_output(x, w)) is Conv2d
    assert tg.use_fast() is True
    assert grad_fn_class(conv_output(x, w)) is cpu_conv.Conv2dOneGemm


def test_use_fast_sets_the_switch_at_once_and_restores_only_in_a_with_block():
    previous = tg.use_fast()
    try:
        tg.use_fast(False)                  # a plain call: stays off
        assert tg.use_fast() is False
        with tg.use_fast(True):
            assert tg.use_fast() is True
            with tg.use_fast(False):
                assert tg.use_fast() is False
            assert tg.use_fast() is True    # each block restores what it found
        assert tg.use_fast() is False
    finally:
        tg.use_fast(previous)


def test_the_switch_is_restored_when_the_block_raises():
    with pytest.raises(ZeroDivisionError):
        with tg.use_fast(False):
            1 / 0
    assert tg.use_fast() is True


@pytest.mark.parametrize("bad", [0, 1, "no", 0.5])
def test_use_fast_wants_a_bool(bad):
    with pytest.raises(TypeError, match="use_fast: expected True or False"):
        tg.use_fast(bad)


def test_ops_without_a_fast_path_run_their_reference(rng):
    x = tg.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    assert grad_fn_class(F.softmax(x, dim=1)).__name__ == "Softmax"
    assert grad_fn_class(F.log_softmax(x, dim=1)).__name__ == "LogSoftmax"


def test_a_gpu_array_gets_the_cuda_fast_path(monkeypatch):
    """Arrays that are not NumPy's are the GPU's: dispatch picks the cuda entry."""
    monkeypatch.setattr(dispatch, "get_array_module", lambda *arrays: object())
    assert dispatch.implementation(Conv2d, []) is cuda.Conv2dCudaIm2col
    assert dispatch.implementation(BatchNorm, []) is BatchNorm     # no GPU fast path: reference
    assert dispatch.implementation(AvgPool2d, []) is AvgPool2d
    with tg.use_fast(False):
        assert dispatch.implementation(Conv2d, []) is Conv2d


def test_a_second_registration_for_the_same_op_and_device_is_refused():
    with pytest.raises(ValueError, match="Conv2d already has a fast path on cpu"):
        dispatch.register_fast(Conv2d, "cpu")(type("Another", (Conv2d,), {}))
    with pytest.raises(ValueError, match="device must be one of"):
        dispatch.register_fast(Conv2d, "tpu")


def test_an_op_registered_here_is_used_by_apply(monkeypatch):
    class Double(Function):
        def forward(self, x):
            return 2 * x

        def backward(self, gy):
            return 2 * gy

    class DoubleFast(Double):
        def forward(self, x):
            return x + x

    monkeypatch.setattr(dispatch, "_fast", dict(dispatch._fast))
    dispatch.register_fast(Double, "cpu")(DoubleFast)
    y = Double.apply(tg.tensor(np.ones(3), requires_grad=True))
    assert grad_fn_class(y) is DoubleFast


@pytest.mark.parametrize("value, expected", [("0", False), ("false", False), ("1", True),
                                             ("", True), ("maybe", True)])
def test_environment_variable_sets_the_switch_at_start_up(value, expected):
    code = "import tinygnet; print(tinygnet.use_fast())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"TINYGNET_FAST": value, "PATH": ""}, check=True)
    assert result.stdout.strip() == str(expected)
    if value == "maybe":
        assert "TINYGNET_FAST='maybe' is not understood" in result.stderr
