"""EMA: Polyak averaging of parameters, used by the GoogLeNet paper at test time.

Keeps a "shadow" copy of every parameter and, after each optimiser step,
moves it a little towards the current value::

    shadow = decay * shadow + (1 - decay) * w

Evaluate with the averaged weights and restore the trained ones afterwards::

    ema = EMA(model.parameters(), decay=0.999, buffers=model.buffers())
    ...  optimizer.step(); ema.update()
    with ema.averaged():
        evaluate(model)

Buffers (batch-norm running statistics) are not averaged: they are already
running averages. Their shadow is a copy taken at each ``update()``, so the
saved EMA state is a complete set of weights for the model.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import backend

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of ``params`` (Tensors) with factor ``decay``."""

    def __init__(self, params, decay=0.999, buffers=None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.params = list(params)
        self.buffers = list(buffers) if buffers is not None else []
        self.shadow = [p.data.copy() for p in self.params]
        self.shadow_buffers = [b.data.copy() for b in self.buffers]
        self.num_updates = 0
        self._swapped = False

    def update(self) -> None:
        """Move each shadow towards its parameter: ``shadow -= (1 - decay) * (shadow - w)``."""
        if self._swapped:
            raise RuntimeError("EMA.update: the averaged weights are swapped in; swap them back first")
        for shadow, p in zip(self.shadow, self.params):
            shadow -= (1.0 - self.decay) * (shadow - p.data)
        for shadow, b in zip(self.shadow_buffers, self.buffers):
            shadow[...] = b.data
        self.num_updates += 1

    def swap(self) -> None:
        """Exchange the live and the averaged arrays (no copy); a second swap undoes it."""
        for k, p in enumerate(self.params):
            p.data, self.shadow[k] = self.shadow[k], p.data
        for k, b in enumerate(self.buffers):
            b.data, self.shadow_buffers[k] = self.shadow_buffers[k], b.data
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def averaged(self):
        """Inside the block the parameters hold the averages; the trained values come back after."""
        self.swap()
        try:
            yield self
        finally:
            self.swap()

    def copy_to(self, params, buffers=None) -> None:
        """Copy the averages into other Tensors (e.g. a second model used for evaluation)."""
        if self._swapped:
            raise RuntimeError("EMA.copy_to: the averaged weights are swapped in; swap them back first")
        for source, targets in ((self.shadow, list(params)), (self.shadow_buffers, list(buffers or []))):
            if targets and len(targets) != len(source):
                raise ValueError(f"EMA.copy_to: {len(targets)} tensors given, {len(source)} averaged")
            for value, t in zip(source, targets):
                t.data[...] = value

    def state_dict(self) -> dict:
        """Decay, update count and the averages as host NumPy arrays."""
        live = self._swapped  # while swapped, the averages sit in the parameters
        shadow = [p.data for p in self.params] if live else self.shadow
        buffers = [b.data for b in self.buffers] if live else self.shadow_buffers
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": [np.array(backend.to_numpy(a)) for a in shadow],
                "shadow_buffers": [np.array(backend.to_numpy(a)) for a in buffers]}

    def load_state_dict(self, state: dict) -> None:
        """Restore; each average goes to its parameter's device and dtype."""
        if self._swapped:
            raise RuntimeError("EMA.load_state_dict: swap the averaged weights back first")
        if not isinstance(state, dict):
            raise TypeError(f"EMA.load_state_dict: expected a dict (what state_dict() returns), "
                            f"got {type(state).__name__}")
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        self.shadow = self._restore(state["shadow"], self.params, "shadow")
        self.shadow_buffers = self._restore(state["shadow_buffers"], self.buffers, "shadow_buffers")

    @staticmethod
    def _restore(arrays, tensors, name):
        if len(arrays) != len(tensors):
            raise ValueError(f"EMA.load_state_dict: {len(arrays)} saved {name}, {len(tensors)} tensors")
        restored = []
        for array, t in zip(arrays, tensors):
            if tuple(array.shape) != tuple(t.data.shape):
                raise ValueError(f"EMA.load_state_dict: saved {name} of shape {tuple(array.shape)} "
                                 f"for a tensor of shape {tuple(t.data.shape)}")
            array = np.array(backend.to_numpy(array), dtype=t.data.dtype)  # a copy
            restored.append(backend.to_device(array, backend.device_of(t.data)))
        return restored

    def __repr__(self):
        return f"EMA(decay={self.decay}, tensors={len(self.params)}, updates={self.num_updates})"
