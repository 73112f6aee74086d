"""The one array-module switch: NumPy on the CPU, CuPy on an NVIDIA GPU.

Every op asks ``xp = get_array_module(array)`` and then writes ``xp.zeros``,
``xp.maximum`` ... so the same code runs on both devices. This is the only
module that knows CuPy exists, and it imports CuPy lazily: code that only
touches the CPU never imports it.

Devices are strings, as in PyTorch: ``"cpu"``, ``"cuda"`` (the current GPU) or
``"cuda:N"``.

Random numbers: ``manual_seed(n)`` reseeds every generator tinygnet uses
(parameter initialisation, dropout, data shuffling and augmentation);
``get_rng_state``/``set_rng_state`` save and restore all of them, the GPU's
included, so a resumed run draws the same numbers.

GPU memory: CuPy allocates through its memory pool (its default), so the
arrays of a training step reuse the blocks freed by the step before instead
of calling cudaMalloc. The kernels of ``tinygnet.cuda`` allocate the same way.
"""
from __future__ import annotations

import importlib
import sys

import numpy as np

__all__ = [
    "get_array_module", "cupy_or_none", "is_cuda_available", "parse_device",
    "device_of", "to_device", "to_numpy", "manual_seed", "default_generator",
    "generator_for", "get_rng_state", "set_rng_state",
]

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


def is_cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    cupy = cupy_or_none()
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def parse_device(device) -> str:
    """Normalise ``"cpu"``, ``"cuda"``, ``"cuda:1"`` (or None = cpu); reject others."""
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
        return name
    raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def _require_cuda(device: str):
    cupy = cupy_or_none()
    if cupy is None:
        raise RuntimeError(
            f"device {device!r} needs CuPy, which is not installed "
            f"({_cupy_error}); install it with: pip install 'tinygnet[gpu]'")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        raise RuntimeError(f"device {device!r}: CuPy is installed but no usable NVIDIA GPU "
                           f"was found ({error})") from None
    index = int(device.split(":")[1])
    if index >= count:
        raise RuntimeError(f"device {device!r}: only {count} GPU(s) visible")
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


# --------------------------------------------------------------------------
# Random numbers: one seed drives the host generator and each GPU generator.
# --------------------------------------------------------------------------
_seed = None
_host_generator = np.random.default_rng()
_gpu_generators: dict = {}


def manual_seed(seed: int) -> None:
    """Seed every random stream tinygnet uses, on the CPU and on each GPU."""
    global _seed, _host_generator
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _seed = int(seed)
    _host_generator = np.random.default_rng(_seed)
    _gpu_generators.clear()


def default_generator() -> np.random.Generator:
    """The host (NumPy) generator: initialisation, shuffling, augmentation."""
    return _host_generator


def generator_for(xp):
    """The generator that draws arrays for module ``xp`` (NumPy or CuPy)."""
    if xp is np:
        return _host_generator
    device = xp.cuda.Device().id
    if device not in _gpu_generators:
        # Derive the GPU stream from the host stream, so one seed fixes both.
        seed = int(_host_generator.integers(0, 2**63 - 1))
        _gpu_generators[device] = _new_gpu_generator(xp, seed)
    return _gpu_generators[device][0]


def _new_gpu_generator(cupy, seed):
    """(generator, bit generator) on the current GPU: cuRAND XORWOW, CuPy's default."""
    bits = cupy.random.XORWOW(seed)
    return cupy.random.Generator(bits), bits


def get_rng_state() -> dict:
    """Every generator's state, for checkpoints that resume exactly.

    ``{"host": the NumPy generator's state, "cuda": {device index: state}}``.
    A GPU generator's state is its cuRAND state array (CuPy keeps it in
    ``XORWOW._state``), copied to the host as bytes.
    """
    return {"host": _host_generator.bit_generator.state,
            "cuda": {device: to_numpy(_curand_state(bits)).copy()
                     for device, (_, bits) in _gpu_generators.items()}}


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned.

    GPU states are restored on the GPUs they came from; on a machine without
    those GPUs they are dropped (the GPU streams then restart from the host
    stream, as after ``manual_seed``).
    """
    _host_generator.bit_generator.state = state["host"]
    _gpu_generators.clear()
    saved = state.get("cuda") or {}
    if not saved or not is_cuda_available():
        return
    cupy = cupy_or_none()
    for device, curand_state in saved.items():
        device = int(device)
        if device >= cupy.cuda.runtime.getDeviceCount():
            continue
        with cupy.cuda.Device(device):
            generator, bits = _new_gpu_generator(cupy, 0)
            target = _curand_state(bits)
            if target.nbytes != curand_state.nbytes:
                raise ValueError(f"set_rng_state: the saved state of cuda:{device} has "
                                 f"{curand_state.nbytes} bytes, this CuPy's generator "
                                 f"{target.nbytes}")
            target[...] = cupy.asarray(curand_state).view(target.dtype).reshape(target.shape)
            _gpu_generators[device] = (generator, bits)


def _curand_state(bits):
    state = getattr(bits, "_state", None)
    if state is None:
        raise RuntimeError("this CuPy version keeps its generator state elsewhere; "
                           "tinygnet cannot save the GPU random state")
    return state
