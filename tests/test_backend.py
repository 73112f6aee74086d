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
    assert backend.parse_device("CUDA:1") == "cuda:1"
    with pytest.raises(ValueError, match="'tpu'"):
        backend.parse_device("tpu")
    with pytest.raises(TypeError):
        backend.parse_device(0)


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
    monkeypatch.setattr(backend, "_cupy", False)
    monkeypatch.setattr(backend, "_cupy_error", ImportError("No module named 'cupy'"))
    with pytest.raises(RuntimeError, match=r"needs CuPy, which is not installed.*tinygnet\[gpu\]"):
        tg.tensor([1.0], device="cuda")
    assert not tg.is_cuda_available()
