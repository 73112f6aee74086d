"""The array-module switch, devices and their errors on a machine without a GPU."""
import subprocess
import sys

import numpy as np
import pytest

import tinygnet as tg
from tinygnet import backend


def test_parse_device():
    assert backend.parse_device("cpu") == "cpu"
    assert backend.parse_device(None) == "cpu"
    assert backend.parse_device("cuda") == "cuda:0"
    assert backend.parse_device("CUDA:0") == "cuda:0"
    with pytest.raises(ValueError, match="'tpu'"):
        backend.parse_device("tpu")
    with pytest.raises(TypeError):
        backend.parse_device(0)


def test_a_second_gpu_is_refused_in_one_line_naming_the_way_to_use_it():
    """Nothing selects GPU N around each op (allocations, kernels and the random stream
    would land on GPU 0 and CuPy refuse the mix): cuda:N > 0 is an error, at once."""
    with pytest.raises(ValueError, match=r"^device 'cuda:1': .*one GPU.*CUDA_VISIBLE_DEVICES=1"):
        backend.parse_device("cuda:1")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=2"):
        tg.tensor([1.0], device="cuda:2")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=3"):
        tg.nn.Linear(2, 2).to("cuda:3")


def test_numpy_arrays_use_numpy():
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(1.0) is np


def test_cpu_path_never_imports_cupy():
    code = (
        "import sys, numpy as np, tinygnet as tg\n"
        "x = tg.tensor(np.ones((2, 3)), requires_grad=True)\n"
        "(x * x).sum().backward()\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(tg.is_cuda_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_what_is_missing(monkeypatch):
    with pytest.raises(RuntimeError, match="cuda") as info:
        tg.tensor([1.0], device="cuda")
    message = str(info.value)
    assert "CuPy" in message and ("not installed" in message or "no usable NVIDIA GPU" in message)


def test_cuda_error_when_cupy_is_absent(monkeypatch):
    monkeypatch.setattr(backend.devices, "_cupy", False)
    monkeypatch.setattr(backend.devices, "_cupy_error", ImportError("No module named 'cupy'"))
    with pytest.raises(RuntimeError, match=r"needs CuPy, which is not installed.*tinygnet\[gpu\]"):
        tg.tensor([1.0], device="cuda")
    assert not tg.is_cuda_available()


def test_rng_state_without_a_gpu_stream_has_no_cuda_entries():
    tg.manual_seed(0)
    state = backend.get_rng_state()
    assert state["cuda"] == {}
    expected = backend.default_generator().random(3)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.default_generator().random(3), expected)


@pytest.mark.skipif(tg.is_cuda_available(), reason="this machine has a GPU")
def test_gpu_rng_state_is_dropped_on_a_machine_without_that_gpu():
    tg.manual_seed(0)
    state = backend.get_rng_state()
    expected = backend.default_generator().random(3)
    state["cuda"] = {0: np.zeros(16, dtype=np.int8)}       # as saved on a GPU machine
    backend.set_rng_state(state)                            # resumes the host stream exactly
    np.testing.assert_array_equal(backend.default_generator().random(3), expected)
