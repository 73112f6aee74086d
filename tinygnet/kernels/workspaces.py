"""Workspaces: scratch arrays that the fast CPU paths reuse from call to call.

Only the fast CPU convolution (``cpu_conv.py``) uses them; the reference ops
of ``tinygnet.functional`` allocate fresh arrays, as plain NumPy code does.
"""
from __future__ import annotations

import threading

import numpy as np

__all__ = ["workspace", "release_workspaces"]

_workspaces = threading.local()


def workspace(name: str, shape, dtype) -> np.ndarray:
    """A host scratch array of ``shape`` and ``dtype`` for an op's temporaries,
    the same memory on every call (its contents are whatever was left there).

    Why: a fresh array of many megabytes costs a page fault for every page
    the first time it is written, and glibc hands big blocks back to the OS
    when they are freed, so every im2col of a training step would fault its
    (C*KH*KW, N*OH*OW) columns in again (where page faults are expensive,
    as on virtual machines, that can double the time of a large convolution's
    backward: README, Performance). One buffer per ``name``
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
