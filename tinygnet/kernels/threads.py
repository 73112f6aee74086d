"""CPU threads for the fast CPU paths: blocks of an op's work run at once.

NumPy runs each elementwise operation on one core, and OpenBLAS gains little
on GoogLeNet's small matrix products. So ``parallel_for`` cuts the heavy work
of an op (the passes of a pooling, a batch norm, the copies of im2col) into
contiguous blocks that a small pool of threads runs at the same time: NumPy
lets go of the GIL inside its loops, so two blocks really do run on two
cores. ``parallel_matmul`` cuts a matrix product into blocks the same way.

BLAS's own threads would then get in the way (they spin for a while after
each product, on the cores the blocks need), so once tinygnet starts its
threads it asks NumPy's OpenBLAS, where it finds it, for one thread.
``set_num_threads(1)`` gives BLAS its threads back, and so does
``use_fast(False)``: the reference ops run their products on BLAS's own
threads, as plain NumPy code would (turning the fast paths back on takes
BLAS down to one thread again). ``set_num_threads(n)``
sets how many, as ``torch.set_num_threads`` does; the default is every core
this process may run on.

Only the fast CPU paths (``tinygnet/kernels/cpu_*.py``) use these threads; the
reference ops of ``tinygnet.functional`` never do.
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .. import dispatch

__all__ = ["get_num_threads", "set_num_threads", "use_one_core", "parallel_for",
           "parallel_matmul"]

_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
    os.cpu_count() or 1)
_executor = None        # the worker threads, made on first use
# A matmul block smaller than this is not worth a thread (tuned with the thresholds of
# cpu_conv.py, cpu_pool.py and cpu_norm.py on GoogLeNet's training step).
_MIN_CHUNK_FLOPS = 1 << 24
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


def use_one_core() -> None:
    """Run this process on one core: tinygnet's work inline (``set_num_threads(1)``) and
    BLAS on one thread too, whatever the environment asked of it. For a worker process
    beside others that each have a core (the demos' ``--jobs`` and ``--processes``)."""
    set_num_threads(1)
    _blas_single_threaded()


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


@dispatch.on_switch
def _follow_the_fast_switch(enabled: bool) -> None:
    """Fast paths off: BLAS gets its threads back. On again: one thread, if ours are running."""
    if not enabled:
        _give_blas_its_threads_back()
    elif _executor is not None:
        _blas_single_threaded()


def parallel_for(total: int, body, min_chunk: int = 1) -> None:
    """Run ``body(start, stop)`` over [0, total), cut into contiguous chunks
    that the CPU threads run at the same time; return when all are done.

    Each chunk must write only its own part of the outputs. Chunks are at
    least ``min_chunk`` long, so small work runs in one call, on this thread:
    a hand-off to another thread costs a wake-up, then the GIL passed back
    and forth between NumPy calls (docs/performance.md has the
    measured cost). An exception in any chunk is raised here, after every
    chunk has finished. A ``parallel_for`` inside a chunk runs inline.
    """
    global _executor
    chunks = max(1, min(_num_threads, total // max(1, min_chunk)))
    if chunks == 1 or getattr(_in_worker, "active", False):
        body(0, total)
        return
    if _executor is None:
        _blas_single_threaded()
        _executor = ThreadPoolExecutor(_num_threads - 1, thread_name_prefix="tinygnet")
    bounds = [total * i // chunks for i in range(chunks + 1)]
    # NumPy's floating-point error handling (np.errstate) belongs to each thread: the worker
    # chunks take the caller's, so a run that silences overflow is silent in every chunk.
    errors = np.geterr()

    def run(start, stop):
        _in_worker.active = True
        try:
            body(start, stop)
        finally:
            _in_worker.active = False

    def run_as_the_caller(start, stop):
        with np.errstate(**errors):
            run(start, stop)

    futures = [_executor.submit(run_as_the_caller, bounds[i], bounds[i + 1])
               for i in range(1, chunks)]
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
    more).
    """
    if _num_threads == 1 or not _blas_single_threaded():
        return np.matmul(a, b, out=out)   # (a BLAS we cannot keep to one thread splits the work)
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
