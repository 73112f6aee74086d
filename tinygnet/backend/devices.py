"""Devices: the one array-module switch, NumPy on the CPU, CuPy on an NVIDIA GPU.

Every op asks ``xp = get_array_module(array)`` and then writes ``xp.zeros``,
``xp.maximum`` ... so the same code runs on both devices. This is the only
module that knows CuPy exists, and it imports CuPy lazily: code that only
touches the CPU never imports it.

Devices are strings, as in PyTorch: ``"cpu"`` and ``"cuda"`` (``"cuda:0"``).
tinygnet runs on one GPU, the first one CUDA shows it: nothing selects another
around each op, so ``"cuda:N"`` for N > 0 is refused; to run on another GPU,
show only that one (``CUDA_VISIBLE_DEVICES=N``), and it is ``cuda:0``.
``to_device`` and ``to_numpy`` move arrays between them.

GPU memory: CuPy allocates through its memory pool (its default), so the
arrays of a training step reuse the blocks freed by the step before instead
of calling cudaMalloc.
"""
from __future__ import annotations

import importlib
import sys

import numpy as np

__all__ = ["get_array_module", "cupy_or_none", "is_cuda_available", "gpu_problem", "parse_device",
           "device_of", "to_device", "to_numpy"]

_cupy = None            # the cupy module once imported, False if unavailable
_cupy_error = None      # why importing cupy failed, for the error message


def cupy_or_none():
    """Import CuPy on first use; return the module, or None if it is absent."""
    global _cupy, _cupy_error
    if _cupy is None:
        try:
            _cupy = importlib.import_module("cupy")
        except Exception as error:  # ImportError, or a broken CUDA install
            _cupy, _cupy_error = False, error
    return _cupy or None


def get_array_module(*arrays):
    """NumPy or CuPy, whichever owns ``arrays`` (NumPy for Python scalars).

    Never imports CuPy: if CuPy was never imported, no array can be a CuPy one.
    """
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        for array in arrays:
            if isinstance(array, cupy.ndarray):
                return cupy
    return np


_gpu_problem = None     # why the GPU is not usable ("" if it is), found once per process

_PROBE = 'extern "C" __global__ void tinygnet_probe(float* x) { x[threadIdx.x] += 1.0f; }'


def is_cuda_available() -> bool:
    """True when a GPU is usable: CuPy imports, sees a GPU, and compiles and runs a kernel.

    Seeing a GPU is not enough: a CuPy whose NVRTC (its runtime compiler) is
    missing or older than the driver passes ``getDeviceCount`` and then fails
    at the first kernel. So one tiny kernel is compiled and launched, once per
    process.
    """
    return not gpu_problem()


def gpu_problem() -> str:
    """Why no GPU is usable, in a few words; "" when one is."""
    global _gpu_problem
    if _gpu_problem is None:
        _gpu_problem = _probe_gpu()
    return _gpu_problem


def _probe_gpu() -> str:
    cupy = cupy_or_none()
    if cupy is None:
        return f"CuPy is not installed ({_cupy_error}); install it with: {_INSTALL}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        return f"CuPy is installed but no usable NVIDIA GPU was found ({_one_line(error)})"
    if count == 0:
        return "CuPy is installed but sees no NVIDIA GPU"
    try:
        x = cupy.zeros(32, dtype=cupy.float32)
        cupy.RawKernel(_PROBE, "tinygnet_probe")((1,), (32,), (x,))
        if not bool((x == 1).all()):
            return "CuPy sees a GPU, but a test kernel computed a wrong result"
    except Exception as error:
        return (f"CuPy sees {count} GPU(s) but cannot compile and run a kernel "
                f"({type(error).__name__}: {_one_line(error)}); the CuPy package may not "
                f"match this CUDA: {_INSTALL}")
    return ""


def _one_line(error) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


_INSTALL = "pip install 'tinygnet[gpu13]' (CUDA 13) or 'tinygnet[gpu12]' (CUDA 12)"


def parse_device(device) -> str:
    """Normalise ``"cpu"``, ``"cuda"``, ``"cuda:0"`` (or None = cpu); reject others."""
    if device is None:
        return "cpu"
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    name = device.strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "cuda":
        return "cuda:0"
    if name.startswith("cuda:") and name[5:].isdigit():
        if int(name[5:]) != 0:
            raise ValueError(f"device {device!r}: tinygnet runs on one GPU, cuda:0; to use "
                             f"GPU {int(name[5:])}, run with CUDA_VISIBLE_DEVICES={int(name[5:])} "
                             f"(it is then cuda:0)")
        return "cuda:0"
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda' ('cuda:0')")


def _require_cuda(device: str):
    cupy = cupy_or_none()
    if cupy is None:
        raise RuntimeError(
            f"device {device!r} needs CuPy, which is not installed "
            f"({_cupy_error}); install it with: {_INSTALL}")
    problem = gpu_problem()
    if problem:
        raise RuntimeError(f"device {device!r}: {problem}")
    return cupy


def device_of(array) -> str:
    """The device string of an array: 'cpu' or 'cuda:N'."""
    if get_array_module(array) is np:
        return "cpu"
    return f"cuda:{array.device.id}"


def to_device(array, device: str):
    """Copy ``array`` to ``device`` (a no-op if it is already there)."""
    device = parse_device(device)
    if device == "cpu":
        return to_numpy(array)
    cupy = _require_cuda(device)
    index = int(device.split(":")[1])
    if isinstance(array, cupy.ndarray) and array.device.id == index:
        return array
    with cupy.cuda.Device(index):
        return cupy.asarray(array)


def to_numpy(array) -> np.ndarray:
    """A NumPy array on the host (copies from the GPU; no copy on the CPU)."""
    if get_array_module(array) is np:
        return np.asarray(array)
    return array.get()
