"""Workspaces: memory that the fast CPU paths reuse from call to call.

* ``workspace(name, ...)``: a scratch array for an op's temporaries, the same
  memory on every call.
* ``lend(shape, dtype)``: an array an op keeps from its forward to its
  backward; when the op lets go of the loan, the memory goes back to a pool
  and is lent again, so every training step reuses the last one's.
* ``keep_freed_memory()``: the same for every other array of a process, by
  asking the C library's allocator to keep what NumPy frees.

Only the fast CPU convolution (``cpu_conv.py``) uses the first two; the
reference ops of ``tinygnet.functional`` allocate fresh arrays, as plain
NumPy code does. The third is a process's choice, made by the programs that
train (the demos, the benchmarks), not by the library.
"""
from __future__ import annotations

import ctypes
import sys
import threading
import weakref

import numpy as np

__all__ = ["workspace", "release_workspaces", "lend", "Loan", "LEND_BUDGET_BYTES",
           "keep_freed_memory"]

_workspaces = threading.local()

# At most this many bytes are lent at once (the rest of a step recomputes
# what it would have kept): at the demo's width a training step keeps about
# 100 MB of convolution columns; at width 1 they would be gigabytes.
LEND_BUDGET_BYTES = 1 << 28
_pool_lock = threading.Lock()
_pool = {"lent": 0, "free": []}     # bytes lent now; buffers handed back, ready to lend


def workspace(name: str, shape, dtype) -> np.ndarray:
    """A host scratch array of ``shape`` and ``dtype`` for an op's temporaries,
    the same memory on every call (its contents are whatever was left there).

    Why: a fresh array of many megabytes costs a page fault for every page
    the first time it is written, and glibc hands big blocks back to the OS
    when they are freed, so every im2col of a training step would fault its
    (C*KH*KW, N*OH*OW) columns in again (where page faults are expensive,
    as on virtual machines, that can double the time of a large convolution's
    backward: docs/performance.md). One buffer per ``name``
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


class Loan:
    """Memory lent by ``lend``: ``.array`` is the caller's while it holds the Loan."""

    def __init__(self, array):
        self.array = array


def lend(shape, dtype) -> Loan | None:
    """A ``Loan`` whose ``.array`` (``shape``, ``dtype``, contents undefined) the caller
    may keep, or None when ``LEND_BUDGET_BYTES`` are already lent.

    Why: an op that keeps a big array from forward to backward (a convolution's
    columns) would otherwise allocate it fresh every step, a page fault per
    page. Nothing needs handing back: when the Loan is garbage collected (the op
    is released after backward, or its graph is dropped), its memory returns to
    the pool, and the next ``lend`` of that size or less reuses it. Views of
    ``.array`` must not outlive the Loan.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with _pool_lock:
        if _pool["lent"] + nbytes > LEND_BUDGET_BYTES:
            return None
        free = _pool["free"]
        fits = [k for k, b in enumerate(free) if b.nbytes >= nbytes]
        buffer = free.pop(min(fits, key=lambda k: free[k].nbytes)) if fits else None
        _pool["lent"] += nbytes
    if buffer is None:
        buffer = np.empty(max(nbytes, 1), dtype=np.uint8)
    loan = Loan(buffer[:nbytes].view(dtype).reshape(shape))
    weakref.finalize(loan, _give_back, buffer, nbytes)
    return loan


def _give_back(buffer, nbytes):
    with _pool_lock:
        _pool["lent"] -= nbytes
        free = _pool["free"]
        free.append(buffer)
        free.sort(key=lambda b: b.nbytes)
        while sum(b.nbytes for b in free) > LEND_BUDGET_BYTES:   # keep at most the budget
            free.pop(0)                                          # the smallest first


# mallopt's parameters (glibc's malloc.h) and the largest mmap threshold it takes on a
# 64-bit system (DEFAULT_MMAP_THRESHOLD_MAX: 4 MiB * sizeof(long)).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory this process frees, for its next arrays.

    Why: by default glibc gives a freed block of more than 128 KiB or so back
    to the operating system (a block it mapped for the array, at once; the top
    of its heap, once more than ``M_TRIM_THRESHOLD`` is free there), so the
    next array of that size faults its pages in again, one page fault per
    4 KiB written. A GoogLeNet training step at the CIFAR demo's width frees
    and allocates the same few hundred arrays every step: thousands of page
    faults a step, each costly on a virtual machine. This sets the size from
    which blocks are mapped on their own to its largest, 32 MiB (larger
    arrays are still mapped and unmapped), and turns trimming off: freed
    memory stays in the heap and the next step's arrays reuse it.

    What it costs: the process holds on to its peak memory (it is not given
    back between steps). Process-wide, for the process's life; a program calls
    it (the demos do, in every process that trains), not the library. Returns
    True when glibc took both settings; False off Linux, where the C library
    has no ``mallopt``, or where it does not take them (musl's accepts none).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Each returns 1 when taken. The mmap threshold first: setting it also stops glibc
    # from moving both thresholds by itself.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, -1))
