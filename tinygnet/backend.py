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

CPU threads: NumPy runs each elementwise operation on one core. So
``parallel_for`` splits the heavy work of an op (the passes of a pooling, a
batch norm, the copies of im2col) into contiguous chunks that threads run at
the same time: NumPy lets go of the GIL inside its loops, so two chunks
really do run on two cores. ``parallel_matmul`` cuts a matrix product into
blocks the same way. Then BLAS's own threads would only get in the way (they
spin for a while after each product, on the cores our chunks need), so once
tinygnet starts its threads it asks NumPy's OpenBLAS, where it finds it, for
one thread; ``set_num_threads(1)`` gives BLAS its threads back.
``set_num_threads(n)`` sets how many, as ``torch.set_num_threads`` does; the
default is every core.

GPU memory: CuPy allocates through its memory pool (its default), so the
arrays of a training step reuse the blocks freed by the step before instead
of calling cudaMalloc. The kernels of ``tinygnet.cuda`` allocate the same way.
"""
from __future__ import annotations

import ctypes
import glob
import importlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

__all__ = [
    "get_array_module", "cupy_or_none", "is_cuda_available", "parse_device",
    "device_of", "to_device", "to_numpy", "manual_seed", "default_generator",
    "generator_for", "get_rng_state", "set_rng_state",
    "get_num_threads", "set_num_threads", "parallel_for", "parallel_matmul",
    "workspace", "release_workspaces",
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
# CPU threads: blocks of an op's work run at once; BLAS kept to one thread.
# --------------------------------------------------------------------------
_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
    os.cpu_count() or 1)
_executor = None        # the worker threads, made on first use
_MIN_CHUNK_FLOPS = 1 << 24   # a matmul block smaller than this is not worth a thread
_in_worker = threading.local()   # set inside a chunk: a nested parallel_for runs inline


def get_num_threads() -> int:
    """How many threads ``parallel_for`` uses on the CPU."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (>= 1) for the work of CPU ops."""
    global _num_threads, _executor
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    if _executor is not None:
        _executor.shutdown()
        _executor = None
    _num_threads = int(n)
    if _num_threads == 1:
        _give_blas_its_threads_back()


def _openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS that NumPy's wheels
    bundle, through ctypes, or None (another BLAS, or not found)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    paths = glob.glob(os.path.join(root, "numpy.libs", "*openblas*")) + glob.glob(
        os.path.join(root, "numpy", ".dylibs", "*openblas*"))
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)      # already loaded by NumPy: the same library
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    return setter, getter
    return None


_blas = None                 # (setter, getter) once looked up; False if not found
_blas_threads_before = None  # BLAS's thread count before we set it to 1


def _blas_single_threaded() -> bool:
    """Ask BLAS for one thread (once); True if it is ours to control."""
    global _blas, _blas_threads_before
    if _blas is None:
        _blas = _openblas() or False
    if _blas and _blas_threads_before is None:
        setter, getter = _blas
        _blas_threads_before = getter()
        setter(1)
    return bool(_blas)


def _give_blas_its_threads_back():
    global _blas_threads_before
    if _blas and _blas_threads_before is not None:
        _blas[0](_blas_threads_before)
        _blas_threads_before = None


def parallel_for(total: int, body, min_chunk: int = 1, xp=np) -> None:
    """Run ``body(start, stop)`` over [0, total), cut into contiguous chunks
    that the CPU threads run at the same time; return when all are done.

    Each chunk must write only its own part of the outputs. Chunks are at
    least ``min_chunk`` long, so small work runs in one call, on this thread
    (a hand-off to another thread costs 0.1 to 0.5 ms on this project's 2-core
    machine: a wake-up, then the GIL passed back and forth between NumPy
    calls). An exception in any
    chunk is raised here. For CuPy arrays (``xp`` not NumPy) the whole range
    runs in one call: the GPU runs each kernel in parallel already.
    """
    global _executor
    chunks = max(1, min(_num_threads, total // max(1, min_chunk)))
    if chunks == 1 or xp is not np or getattr(_in_worker, "active", False):
        body(0, total)
        return
    if _executor is None:
        _blas_single_threaded()
        _executor = ThreadPoolExecutor(_num_threads - 1, thread_name_prefix="tinygnet")
    bounds = [total * i // chunks for i in range(chunks + 1)]

    def run(start, stop):
        _in_worker.active = True
        try:
            body(start, stop)
        finally:
            _in_worker.active = False

    futures = [_executor.submit(run, bounds[i], bounds[i + 1]) for i in range(1, chunks)]
    try:
        run(bounds[0], bounds[1])       # the first chunk runs on the calling thread
    finally:
        wait(futures)                   # never leave a chunk running past an error
    for future in futures:
        future.result()


def parallel_matmul(a, b, out=None):
    """``a @ b`` (NumPy's matmul, 2-D or batched 3-D) on the CPU threads,
    into ``out`` if given (for instance a ``workspace`` array).

    The product is cut into independent blocks, one per thread, each an
    ordinary BLAS call writing its own part of the result: the batch of a
    batched product, else the columns of a 2-D one (or its rows, if they are
    more). CuPy arrays: a plain matmul.
    """
    xp = get_array_module(a, b)
    if xp is not np or _num_threads == 1 or not _blas_single_threaded():
        return xp.matmul(a, b, out=out)   # (a BLAS we cannot keep to one thread splits the work)
    M, K, L = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if out is None:
        out = np.empty(batch + (M, L), dtype=np.result_type(a, b))
    flops = 2 * M * K * L
    if len(batch) == 1 and batch[0] >= _num_threads:
        def block(i0, i1):
            np.matmul(a[i0:i1] if a.ndim == 3 else a, b[i0:i1] if b.ndim == 3 else b,
                      out=out[i0:i1])
        total, flops_per_item = batch[0], flops
    elif L >= M:
        def block(j0, j1):
            np.matmul(a, b[..., j0:j1], out=out[..., j0:j1])
        total, flops_per_item = L, flops // L * max(1, int(np.prod(batch)))
    else:
        def block(i0, i1):
            np.matmul(a[..., i0:i1, :], b, out=out[..., i0:i1, :])
        total, flops_per_item = M, flops // M * max(1, int(np.prod(batch)))
    parallel_for(total, block, min_chunk=_MIN_CHUNK_FLOPS // max(1, flops_per_item) + 1)
    return out


# --------------------------------------------------------------------------
# Workspaces: scratch arrays reused from call to call (CPU).
# --------------------------------------------------------------------------
_workspaces = threading.local()


def workspace(name: str, shape, dtype) -> np.ndarray:
    """A host scratch array of ``shape`` and ``dtype`` for an op's temporaries,
    the same memory on every call (its contents are whatever was left there).

    Why: a fresh array of many megabytes costs a page fault for every page
    the first time it is written, and glibc hands big blocks back to the OS
    when they are freed, so every im2col of a training step would fault its
    (C*KH*KW, N*OH*OW) columns in again. On this project's VM that doubled
    the time of a width-1 convolution's backward. One buffer per ``name``
    and thread, grown as needed and kept: the caller must be done with the
    array before it asks for the same name again. ``release_workspaces()``
    frees them (the next call allocates again).
    """
    buffers = _workspaces.__dict__.setdefault("buffers", {})
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = buffers.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffers.pop(name, None)          # free the old one before allocating a bigger one
        buffer = buffers[name] = np.empty(max(nbytes, 1), dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def release_workspaces() -> None:
    """Free this thread's workspaces (as ``torch.cuda.empty_cache`` frees cached blocks)."""
    _workspaces.__dict__.pop("buffers", None)


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
