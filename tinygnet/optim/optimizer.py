"""Optimisers: SGD (with momentum, Nesterov), Adam and AdamW, with PyTorch's update rules.

An optimiser holds ``param_groups``: a list of dicts, each with ``"params"``
(a list of Tensors) and its hyperparameters (``"lr"``, ``"weight_decay"`` ...),
so that, for example, biases and batch-norm weights can skip weight decay::

    SGD([{"params": weights}, {"params": biases, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, weight_decay=5e-4)

A plain list of Tensors makes one group. Schedules change ``group["lr"]``.
``step()`` updates each parameter in place (``p.data``, NumPy or CuPy), one
whole-array update per parameter, keeping its dtype. Per-parameter state
(momentum buffers, Adam moments, step counts) lives in ``self.state``, keyed by
the parameter's position across the groups: that makes ``state_dict()``
plain data (NumPy arrays, numbers) that can be saved and loaded onto any device.
"""
from __future__ import annotations

import copy
import math

import numpy as np

from .. import backend

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, ``step``, ``state_dict``.

    Subclasses define ``_update(w, g, state, group)``: update the array ``w``
    in place from its gradient ``g``, using and updating the dict ``state``.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups = []
        seen = set()
        for group in groups:
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{type(self).__name__}: parameter groups must be dicts with a "
                                f"'params' list, got {group!r:.80}")
            unknown = set(group) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown option(s) {sorted(unknown)} in a "
                                 f"parameter group; known: {sorted(self.defaults)}")
            params = list(group["params"])
            for p in params:
                if not hasattr(p, "data"):
                    raise TypeError(f"{type(self).__name__}: parameters must be Tensors, "
                                    f"got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter appears in more than "
                                     f"one group (shape {tuple(p.data.shape)})")
                seen.add(id(p))
            self.param_groups.append({**self.defaults, **group, "params": params})
        self.state: dict[int, dict] = {}

    def _indexed_params(self):
        """(position, parameter, its group) for every parameter, in a fixed order."""
        position = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield position, p, group
                position += 1

    def zero_grad(self) -> None:
        """Forget every gradient (``p.grad = None``): backward will start from scratch."""
        for _, p, _ in self._indexed_params():
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for i, p, group in self._indexed_params():
            if p.grad is None:
                continue
            g = getattr(p.grad, "data", p.grad)
            if g.shape != p.data.shape:
                raise ValueError(f"{type(self).__name__}: gradient shape {tuple(g.shape)} does not "
                                 f"match parameter shape {tuple(p.data.shape)}")
            self._update(p.data, g, self.state.setdefault(i, {}), group)

    def _update(self, w, g, state, group):
        raise NotImplementedError

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Hyperparameters and per-parameter state as host NumPy arrays (copies)."""
        state = {i: {key: np.array(backend.to_numpy(value)) if hasattr(value, "shape") else value
                     for key, value in entry.items()}
                 for i, entry in self.state.items()}
        groups, position = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            saved = {key: copy.deepcopy(value) for key, value in group.items() if key != "params"}
            saved["params"] = list(range(position, position + count))
            groups.append(saved)
            position += count
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state; arrays go to each parameter's device and dtype."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a dict with 'state' "
                            f"and 'param_groups' (what state_dict() returns), got "
                            f"{type(state_dict).__name__}")
        saved_groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        saved_sizes = [len(g["params"]) for g in saved_groups]
        if sizes != saved_sizes:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved state has groups of "
                             f"{saved_sizes} parameters, this optimiser has {sizes}")
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({key: copy.deepcopy(value) for key, value in saved.items() if key != "params"})
        params = {i: p for i, p, _ in self._indexed_params()}
        self.state = {}
        for i, entry in state_dict["state"].items():
            p = params[int(i)]
            restored = {}
            for key, value in entry.items():
                if hasattr(value, "shape"):
                    if tuple(value.shape) != tuple(p.data.shape):
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state {key!r} of "
                                         f"parameter {i} has shape {tuple(value.shape)}, the "
                                         f"parameter has {tuple(p.data.shape)}")
                    value = np.array(backend.to_numpy(value), dtype=p.data.dtype)  # a copy
                    value = backend.to_device(value, backend.device_of(p.data))
                restored[key] = value
            self.state[int(i)] = restored

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            options = ", ".join(f"{key}={value}" for key, value in group.items() if key != "params")
            lines.append(f"  group {k}: {len(group['params'])} params, {options}")
        return "\n".join(lines + [")"])


def _check_non_negative(owner, **values):
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{owner}: {name} must be >= 0, got {value!r}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and L2 weight decay.

    PyTorch's rule, with ``g`` the gradient and ``b`` the momentum buffer::

        g = g + weight_decay * w
        b = g                                   (first step)
        b = momentum * b + (1 - dampening) * g  (later steps)
        g = g + momentum * b   if nesterov else   b
        w = w - lr * g
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        _check_non_negative("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov needs momentum > 0 and dampening 0, "
                             f"got momentum={momentum}, dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, w, g, state, group):
        lr, momentum, weight_decay = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        if weight_decay:
            g = g + weight_decay * w
        if momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = g.copy()
            else:
                buffer *= momentum
                buffer += (1.0 - float(group["dampening"])) * g
            g = g + momentum * buffer if group["nesterov"] else buffer
        w -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction; ``weight_decay`` is L2 in the gradient.

    With ``t`` the step count (from 1), ``m``/``v`` the moment estimates::

        g = g + weight_decay * w               (Adam)
        w = w * (1 - lr * weight_decay)        (AdamW: decoupled, instead of the line above)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        name = type(self).__name__
        _check_non_negative(name, lr=lr, eps=eps, weight_decay=weight_decay)
        if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"{name}: betas must be two numbers in [0, 1), got {betas!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, w, g, state, group):
        xp = backend.get_array_module(w)
        lr, eps, weight_decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(w), exp_avg_sq=xp.zeros_like(w))
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        if weight_decay and self.decoupled_weight_decay:
            w *= 1.0 - lr * weight_decay
        elif weight_decay:
            g = g + weight_decay * w
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        denominator = xp.sqrt(v)
        denominator /= math.sqrt(1.0 - beta2 ** t)
        denominator += eps
        update = m / denominator
        update *= lr / (1.0 - beta1 ** t)
        w -= update


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``w *= 1 - lr * weight_decay``."""

    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
