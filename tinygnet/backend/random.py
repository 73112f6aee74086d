"""Random numbers: one seed drives every stream tinygnet draws from.

``manual_seed(n)`` reseeds the host (NumPy) generator, which draws the
initial weights, the data shuffling and augmentation and the CPU's dropout
masks, and resets the GPU generators, which are derived from the host stream
the first time a GPU draws (dropout on the GPU). ``get_rng_state`` /
``set_rng_state`` save and restore all of them, the GPU's included, so a
resumed run draws exactly the numbers it would have drawn.
"""
from __future__ import annotations

import numpy as np

from .devices import cupy_or_none, is_cuda_available, to_numpy

__all__ = ["manual_seed", "default_generator", "generator_for", "get_rng_state",
           "set_rng_state"]

_host_generator = np.random.default_rng()
_gpu_generators: dict = {}


def manual_seed(seed: int) -> None:
    """Seed every random stream tinygnet uses, on the CPU and on each GPU."""
    global _host_generator
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _host_generator = np.random.default_rng(int(seed))
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
