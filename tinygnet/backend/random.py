"""Random numbers: one seed drives every stream tinygnet draws from.

``manual_seed(n)`` reseeds the host (NumPy) generator, which draws the
initial weights, the data shuffling and augmentation and the CPU's dropout
masks, and resets the GPU generators, which are derived from the host stream
the first time a GPU draws (dropout on the GPU). ``get_rng_state`` /
``set_rng_state`` save and restore all of them, the GPU's included, so a
resumed run draws exactly the numbers it would have drawn (on the same GPU
model and CuPy version; elsewhere a GPU's stream restarts, with a warning).
"""
from __future__ import annotations

import warnings

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

    The host stream is always restored. A GPU stream is restored on the GPU it
    came from when this machine's generator has the same state size; otherwise
    (no GPU here, or another GPU model or CuPy version: CuPy sizes the cuRAND
    state by the GPU's multiprocessor count) it is dropped with a warning, and
    that GPU's stream is derived afresh from the host stream, as after
    ``manual_seed``: the run goes on, but its dropout masks are no longer those
    of the uninterrupted run.
    """
    _host_generator.bit_generator.state = state["host"]
    _gpu_generators.clear()
    saved = state.get("cuda") or {}
    if not saved:
        return
    available = is_cuda_available()
    cupy = cupy_or_none() if available else None
    for device, curand_state in saved.items():
        device = int(device)
        if not available or device >= cupy.cuda.runtime.getDeviceCount():
            _dropped(device, "this machine has no such GPU")
            continue
        with cupy.cuda.Device(device):
            generator, bits = _new_gpu_generator(cupy, 0)
            target = _curand_state(bits)
            if target.nbytes != curand_state.nbytes:
                _dropped(device, f"its saved state has {curand_state.nbytes} bytes, this GPU's "
                                 f"generator {target.nbytes} (another GPU model or CuPy version)")
                continue
            target[...] = cupy.asarray(curand_state).view(target.dtype).reshape(target.shape)
            _gpu_generators[device] = (generator, bits)


def _dropped(device, why):
    warnings.warn(f"the random stream of cuda:{device} cannot be restored ({why}); it "
                  f"restarts from the host stream, so dropout draws differ from the "
                  f"uninterrupted run", RuntimeWarning, stacklevel=3)


def _curand_state(bits):
    state = getattr(bits, "_state", None)
    if state is None:
        raise RuntimeError("this CuPy version keeps its generator state elsewhere; "
                           "tinygnet cannot save the GPU random state")
    return state
