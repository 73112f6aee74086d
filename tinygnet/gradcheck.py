"""Check backprop against finite differences.

The idea, for a function ``y = f(x1, x2, ...)``:

1. Draw a random upstream gradient ``gy`` of y's shape and form the scalar
   ``L = sum(y * gy)``. Backprop gives dL/dxi (the "analytic" gradient).
   A random ``gy`` matters: with ``gy = 1`` the check of ``sum(softmax(x))``
   sees a gradient of exactly zero, and a backward that returns zeros passes.
2. Nudge one element of xi by ``+eps`` and ``-eps`` and take the central
   difference ``(L(x + eps) - L(x - eps)) / (2 eps)`` (the "numeric"
   gradient; its error is O(eps^2)).
3. The two must agree: ``|analytic - numeric| <= atol + rtol * |numeric|``.

In float32 the rounding error of L swamps the O(eps^2) term, so the check
runs in float64 only.

For big inputs (a whole network) nudging every element costs two forward
passes each. ``mode="directional"`` instead checks the derivative along a few
random directions v: numeric ``(L(x + eps v) - L(x - eps v)) / (2 eps)``
against analytic ``sum(dL/dx * v)``: a wrong gradient anywhere changes it.
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_numpy
from .tensor import Tensor, no_grad

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """Backprop and finite differences disagree; the message says where."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, mode="full",
              n_directions=3, max_elements=None, seed=0, raise_exception=True):
    """Compare backprop with central finite differences for every input that requires grad.

    Args:
        fn: a function of ``*inputs`` returning a Tensor, or a tuple/list of
            Tensors (each gets its own random upstream gradient).
        inputs: a Tensor or a sequence of Tensors (and other arguments passed
            through unchanged). Float64 only.
        eps: the finite-difference step.
        atol, rtol: agreement needed, ``|a - n| <= atol + rtol * |n|``.
        mode: ``"full"`` nudges every element (or ``max_elements`` sampled
            ones per input); ``"directional"`` checks ``n_directions`` random
            directional derivatives per input (cheap, for large inputs).
        seed: seeds the upstream gradient, the sample and the directions.
        raise_exception: if False, return False instead of raising.

    Returns:
        True if every checked derivative agrees.

    Raises:
        GradcheckError naming the input, the worst element's index, and the
        analytic and numeric values; TypeError for non-float64 inputs or an
        output that is not a Tensor; ValueError for an ``eps`` that is not > 0.
    """
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad; nothing to check")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(
                f"gradcheck: input {i} is {inputs[i].dtype}; use float64. In float32 the "
                f"rounding error of a finite difference (~1e-7 / eps) is larger than the "
                f"gradient errors the check is meant to find.")
    if mode not in ("full", "directional"):
        raise ValueError(f"gradcheck: mode must be 'full' or 'directional', got {mode!r}")
    if not eps > 0 or not np.isfinite(eps):
        raise ValueError(f"gradcheck: eps must be a finite number > 0 (the step of the finite "
                         f"difference), got {eps!r}")
    rng = np.random.default_rng(seed)

    # 1. analytic gradients of L = sum_k sum(y_k * gy_k)
    outputs = _as_tuple(fn(*inputs))
    for k, y in enumerate(outputs):
        if not isinstance(y, Tensor):
            raise TypeError(f"gradcheck: fn must return a Tensor or a tuple of Tensors; "
                            f"output {k} is a {type(y).__module__}.{type(y).__name__}, which has "
                            f"no gradient to check (was it computed from .data or .numpy()?)")
    xp = get_array_module(outputs[0].data)
    upstream = [xp.asarray(rng.standard_normal(y.shape)).astype(y.dtype) for y in outputs]
    for i in checked:
        inputs[i].grad = None
    loss = None
    for y, gy in zip(outputs, upstream):
        if not y.requires_grad:
            continue
        term = (y * Tensor._wrap(gy)).sum()
        loss = term if loss is None else loss + term
    if loss is None:
        raise ValueError("gradcheck: fn's output does not depend on any input that requires grad")
    loss.backward()
    analytic = {i: (to_numpy(inputs[i].grad.data) if inputs[i].grad is not None
                    else np.zeros(inputs[i].shape)) for i in checked}

    def objective():
        with no_grad():
            ys = _as_tuple(fn(*inputs))
        return float(sum(float((y.data * gy).sum()) for y, gy in zip(ys, upstream)))

    # 2. numeric gradients, input by input
    for i in checked:
        x = inputs[i].data
        if mode == "full":
            ok, message = _check_elements(i, x, analytic[i], objective, eps, atol, rtol,
                                          max_elements, rng)
        else:
            ok, message = _check_directions(i, x, analytic[i], objective, eps, atol, rtol,
                                            n_directions, rng)
        if not ok:
            if raise_exception:
                raise GradcheckError(message)
            return False
    return True


def _as_tuple(y):
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _check_elements(i, x, analytic, objective, eps, atol, rtol, max_elements, rng):
    flat = x.reshape(-1)          # a view: nudging it nudges the input
    if flat.base is None and x.size > 1 and not x.flags.c_contiguous:
        raise ValueError(f"gradcheck: input {i} must be contiguous")
    positions = np.arange(x.size)
    if max_elements is not None and x.size > max_elements:
        positions = np.sort(rng.choice(x.size, size=max_elements, replace=False))
    numeric = np.empty(len(positions))
    for k, p in enumerate(positions):
        original = flat[p].item()
        flat[p] = original + eps
        plus = objective()
        flat[p] = original - eps
        minus = objective()
        flat[p] = original
        numeric[k] = (plus - minus) / (2 * eps)
    a = analytic.reshape(-1)[positions]
    error = np.abs(a - numeric) - (atol + rtol * np.abs(numeric))
    worst = int(np.argmax(error))
    if error[worst] <= 0:
        return True, ""
    index = np.unravel_index(positions[worst], x.shape)
    n_bad = int((error > 0).sum())
    return False, (f"gradcheck failed for input {i} (shape {tuple(x.shape)}): "
                   f"{n_bad} of {len(positions)} checked elements disagree; worst at index "
                   f"{tuple(int(j) for j in index)}: analytic {a[worst]:.8g}, "
                   f"numeric {numeric[worst]:.8g} (atol={atol}, rtol={rtol})")


def _check_directions(i, x, analytic, objective, eps, atol, rtol, n_directions, rng):
    xp = get_array_module(x)
    original = x.copy()
    for d in range(n_directions):
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v)
        v_dev = xp.asarray(v)
        x[...] = original + eps * v_dev
        plus = objective()
        x[...] = original - eps * v_dev
        minus = objective()
        x[...] = original
        numeric = (plus - minus) / (2 * eps)
        expected = float((analytic * v).sum())
        if abs(expected - numeric) > atol + rtol * abs(numeric):
            return False, (f"gradcheck (directional) failed for input {i} (shape "
                           f"{tuple(x.shape)}), direction {d}: analytic {expected:.8g}, "
                           f"numeric {numeric:.8g} (atol={atol}, rtol={rtol})")
    return True, ""
