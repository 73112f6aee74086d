"""Which implementation of an op runs: the reference, or a fast path for the device.

Every op has one reference implementation, a ``Function`` subclass in
``tinygnet.functional``: the plain code a learner reads. A fast path is
another ``Function`` that computes the same thing faster on one device (the
CPU's threads and workspaces, the GPU's CUDA kernels); it lives in
``tinygnet.kernels`` and registers itself here, for one (reference, device)
pair::

    @register_fast(Conv2d, "cpu")
    class Conv2dOneGemm(Conv2d):
        ...

``Function.apply`` asks ``implementation(Conv2d, arrays)`` before it runs an
op: that is the single dispatch point. It answers with the fast path
registered for the device the arrays live on, if fast paths are on, and with
the reference itself otherwise.

``use_fast(False)`` turns every fast path off (the reference runs everywhere,
CPU and GPU); as a context manager it restores the previous setting on exit.
``use_fast()`` returns the current setting. The environment variable
``TINYGNET_FAST=0`` turns them off at start-up. Code that must follow the
switch registers with ``on_switch`` (the CPU threads give BLAS its own
threads back while the fast paths are off).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .backend import get_array_module

__all__ = ["register_fast", "implementation", "use_fast", "fast_paths", "on_switch", "DEVICES"]

DEVICES = ("cpu", "cuda")

_fast = {}                    # (reference Function class, device) -> fast Function class
_listeners = []               # called with the new setting whenever use_fast changes it


def _enabled_at_start_up() -> bool:
    value = os.environ.get("TINYGNET_FAST", "1").strip().lower()
    if value in ("1", "true", "on", "yes", ""):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    warnings.warn(f"TINYGNET_FAST={value!r} is not understood (use 0 or 1); fast paths stay on",
                  stacklevel=2)
    return True


_enabled = _enabled_at_start_up()


def register_fast(reference, device: str):
    """Class decorator: the decorated Function replaces ``reference`` on ``device``."""
    if device not in DEVICES:
        raise ValueError(f"register_fast: device must be one of {DEVICES}, got {device!r}")

    def register(fast):
        if (reference, device) in _fast:
            raise ValueError(f"register_fast: {reference.__name__} already has a fast path on "
                             f"{device} ({_fast[reference, device].__name__})")
        _fast[reference, device] = fast
        return fast
    return register


def implementation(reference, arrays):
    """The Function class to run for op ``reference`` on these input arrays."""
    if not _enabled or not _fast:
        return reference
    device = "cpu" if get_array_module(*arrays) is np else "cuda"
    return _fast.get((reference, device), reference)


def on_switch(listener):
    """Call ``listener(enabled)`` each time ``use_fast`` turns the fast paths on or off."""
    _listeners.append(listener)
    return listener


def _set(enabled: bool) -> None:
    global _enabled
    changed, _enabled = enabled != _enabled, enabled
    if changed:
        for listener in _listeners:
            listener(enabled)


def fast_paths() -> list:
    """Every registered fast path, as (reference, device, fast) triples."""
    return [(reference, device, fast) for (reference, device), fast in _fast.items()]


class _Setting:
    """What ``use_fast(flag)`` returns: the switch is already set; leaving a
    ``with`` block puts the previous setting back."""

    def __init__(self, previous: bool):
        self.previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        _set(self.previous)
        return False


def use_fast(enabled=None):
    """Turn the fast paths on or off; with no argument, return whether they are on.

    ``use_fast(False)`` sets the switch at once (for the whole process);
    ``with use_fast(False): ...`` also restores the previous setting on exit.
    """
    if enabled is None:
        return _enabled
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"use_fast: expected True or False, got {enabled!r}")
    previous = _enabled
    _set(bool(enabled))
    return _Setting(previous)
