"""Tensor and the reverse-mode autograd engine.

A ``Tensor`` wraps an array (NumPy or CuPy) and remembers the ``Function``
that made it. ``loss.backward()`` walks that graph from the loss back to the
leaves in reverse topological order, calling each function's ``backward``
and summing the gradients that meet at a tensor used more than once (the
input of an Inception module feeds four branches: its gradient is the sum of
four contributions).

Notation used across tinygnet: ``x, y`` are the input and output arrays of an
op, ``gy`` is dLoss/dy (the upstream gradient), ``gx`` is dLoss/dx.

How an op is written (see ``functional/`` for many more)::

    class Exp(Function):
        def forward(self, x):             # arrays in, array out
            y = get_array_module(x).exp(x)
            self.y = y                    # keep only what backward needs
            return y

        def backward(self, gy):           # dLoss/dy in, dLoss/dx out
            return gy * self.y

    def exp(x): return Exp.apply(x)

``Function.apply`` runs the op's reference implementation (the class itself)
unless a fast path is registered for the device and turned on
(``tinygnet/dispatch.py``).

This file is the engine: grad mode, ``Function``, ``Tensor`` itself and the
backward pass. Beside it, ``ops.py`` holds the elementary ops behind Tensor's
operators and methods (``+``, ``*``, ``@``, ``x[i]``, ``sum``, ``reshape``,
``to``, ...) and sets those methods on Tensor; ``conversion.py`` turns Python
numbers and lists into arrays and explains, in one line, what it cannot
convert.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import backend, dispatch
from .backend import get_array_module
from .conversion import _explain_bad_numbers, _operand_array, _python_to_array

__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad",
           "is_grad_enabled", "as_tensor"]


# --------------------------------------------------------------------------
# Grad mode: inside ``no_grad()`` ops build no graph and keep nothing.
# --------------------------------------------------------------------------
_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    previous = is_grad_enabled()
    _state.grad_enabled = enabled
    try:
        yield
    finally:
        _state.grad_enabled = previous


def no_grad():
    """Context manager (and decorator): no graph is built inside it."""
    return _grad_mode(False)


def enable_grad():
    return _grad_mode(True)


# --------------------------------------------------------------------------
# Function: one node of the graph.
# --------------------------------------------------------------------------
class Function:
    """Base class of every differentiable op.

    Subclasses define ``forward(*arrays, **options) -> array`` and
    ``backward(gy) -> gx`` (one gradient per array input, a tuple when there
    are several; ``None`` for an input that needs none). ``forward`` stores on
    ``self`` what ``backward`` needs: the arrays kept there stay in memory
    until the backward pass has run. ``self.needs_input_grad`` (a tuple of
    bools, set before ``forward``; all False outside a graph) lets an op keep
    and compute only what the inputs that need a gradient need (``Mul`` and
    ``Div`` in ``ops.py``).
    """

    inputs: tuple = ()
    needs_input_grad: tuple = ()

    @classmethod
    def apply(cls, *args, **options):
        """Run forward on Tensors and, if gradients are needed, record the node."""
        tensors = [a for a in args if isinstance(a, Tensor)]
        _check_same_device(cls.__name__, tensors)
        arrays = [a.data if isinstance(a, Tensor) else a for a in args]
        # The one dispatch point: a fast path registered for this op on this device,
        # if fast paths are on (tinygnet/dispatch.py); otherwise cls, the reference.
        fn = dispatch.implementation(cls, arrays)()
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        record = is_grad_enabled() and any(needs)
        # Outside a graph nothing needs a gradient, so ops save nothing.
        fn.needs_input_grad = needs if record else (False,) * len(args)
        y = fn.forward(*arrays, **options)
        out = Tensor._wrap(y, requires_grad=record)
        if record:
            fn.inputs = tuple(args)
            out._ctx = fn
        return out

    def forward(self, *arrays, **options):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def release(self):
        """Drop saved state after backward; a second backward is then an error."""
        self.__dict__.clear()
        self.released = True


def _check_same_device(op_name, tensors):
    if len(tensors) < 2:
        return
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise RuntimeError(f"{op_name}: tensors are on different devices "
                           f"({', '.join(sorted(devices))}); move them with .to(device)")


# --------------------------------------------------------------------------
# Tensor
# --------------------------------------------------------------------------
class Tensor:
    """An array with an optional gradient and a link to the op that made it.

    Attributes: ``data`` (the NumPy/CuPy array), ``grad`` (a Tensor or None),
    ``requires_grad``. Build one with ``tinygnet.tensor(...)``. The operators
    and the methods that run an op (``+``, ``@``, ``x[i]``, ``sum``,
    ``reshape``, ``to``, ...) are defined beside their ops, in ``ops.py``.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "__weakref__")
    __array_priority__ = 1000  # so ``ndarray * Tensor`` defers to Tensor.__rmul__

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        xp = get_array_module(data)
        if isinstance(data, Tensor):
            data = data.data
        elif xp is np:
            data = np.asarray(data) if isinstance(data, np.ndarray) else _python_to_array(data, dtype)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        if device is not None:
            data = backend.to_device(data, device)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, got {data.dtype}")
        self.data = data
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = None

    @classmethod
    def _wrap(cls, array, requires_grad=False):
        """Wrap an op's output array without copying or checks."""
        t = cls.__new__(cls)
        t.data, t.requires_grad, t.grad, t._ctx = array, requires_grad, None, None
        return t

    # ---------------------------------------------------------------- info
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._ctx is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.numpy(), precision=4, separator=", ", threshold=20,
                               prefix="tensor(")
        extras = [f"dtype={self.dtype}"]
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self._ctx is not None:
            extras.append(f"grad_fn={type(self._ctx).__name__}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return f"tensor({body}, {', '.join(extras)})"

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (a host copy for a GPU tensor)."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor._wrap(self.data)

    def requires_grad_(self, flag=True) -> "Tensor":
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, got {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    # ------------------------------------------------------------ backward
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` is the upstream gradient; it may be omitted only for a
        one-element tensor. The graph is freed afterwards unless
        ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad "
                               "(no input of the ops that made it requires grad)")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a one-element tensor, "
                                   f"got shape {self.shape}; pass grad= of that shape")
            xp = get_array_module(self.data)
            gy = xp.ones_like(self.data)
        else:
            gy = grad.data if isinstance(grad, Tensor) else grad
            xp = get_array_module(self.data)
            gy = xp.asarray(gy, dtype=self.dtype)
            if gy.shape != self.data.shape:
                raise ValueError(f"backward(): grad has shape {tuple(gy.shape)} "
                                 f"but the tensor has shape {self.shape}")
        run_backward(self, gy, retain_graph)

    def zero_grad(self):
        self.grad = None



def tensor(data, requires_grad=False, dtype=None, device="cpu") -> Tensor:
    """Make a Tensor, copying ``data``.

    NumPy floating and integer arrays keep their dtype; Python numbers and
    lists become float32 (pass ``dtype=`` to choose). ``device`` is ``"cpu"``
    or ``"cuda"`` (``"cuda:0"``: tinygnet runs on one GPU).
    """
    if isinstance(data, Tensor):
        data = data.data
    xp = get_array_module(data)
    if xp is np and not isinstance(data, np.ndarray):
        try:
            array = _python_to_array(data, dtype)
        except (ValueError, TypeError):
            _explain_bad_numbers(data, "tensor(): ")
            raise
        if array.dtype.kind not in "fiub":
            _explain_bad_numbers(data, "tensor(): ")
        data = array
    array = xp.array(data, dtype=dtype, copy=True)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"tensor(): expected numbers (float, int or bool), got an array of "
                        f"dtype {array.dtype}")
    return Tensor(backend.to_device(array, device), requires_grad=requires_grad)


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """``value`` as a Tensor (no copy if it already is one).

    With ``like``, a number, list or array takes ``like``'s dtype and device,
    as the other operand of ``like + value`` does.
    """
    if isinstance(value, Tensor):
        return value
    if like is None:
        return Tensor(value)
    return Tensor._wrap(_operand_array(value, like.data))


# --------------------------------------------------------------------------
# The backward pass
# --------------------------------------------------------------------------
def _topological_order(root: Tensor) -> list:
    """Tensors that lead to ``root``, each after all its inputs (iterative DFS).

    Recursion would hit Python's limit on deep graphs (a chain of 5,000 ops);
    an explicit stack does not.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        fn = node._ctx
        if fn is None:
            continue
        if getattr(fn, "released", False):
            raise RuntimeError(
                "backward through the graph a second time: its saved values were freed by "
                "the first backward. Pass retain_graph=True to the first backward() if you "
                "need to go through it again.")
        for parent in fn.inputs:
            if isinstance(parent, Tensor) and parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


def run_backward(root: Tensor, gy, retain_graph: bool) -> None:
    order = _topological_order(root)
    grads = {id(root): gy}      # id(tensor) -> summed dLoss/dtensor so far
    owned = set()               # ids whose gradient array we allocated (safe to += into)

    for node in reversed(order):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        fn = node._ctx
        if fn is None:                        # a leaf: accumulate into .grad
            if node.requires_grad:
                _accumulate_leaf(node, g, owned_by_us=id(node) in owned)
            continue
        input_grads = fn.backward(g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        for parent, gx in zip(fn.inputs, input_grads):
            if gx is None or not isinstance(parent, Tensor) or not parent.requires_grad:
                continue
            if gx.shape != parent.data.shape:
                raise RuntimeError(f"{type(fn).__name__}.backward returned a gradient of shape "
                                   f"{tuple(gx.shape)} for an input of shape {parent.shape}")
            if gx.dtype != parent.data.dtype:     # a float64 gradient of a float32 tensor
                raise RuntimeError(f"{type(fn).__name__}.backward returned a {gx.dtype} gradient "
                                   f"for a {parent.dtype} input")
            key = id(parent)
            if key not in grads:
                grads[key] = gx               # first contribution: keep, do not copy
            elif key in owned:
                grads[key] += gx              # our own buffer: add in place
            else:
                grads[key] = grads[key] + gx  # may alias another gradient: new buffer
                owned.add(key)
        if not retain_graph:
            fn.release()   # frees saved arrays now, not when the graph is collected


def _accumulate_leaf(leaf: Tensor, g, owned_by_us: bool) -> None:
    if leaf.grad is None:
        # ``g`` may be shared with another gradient (Add passes gy to both
        # inputs), so keep a private copy unless we allocated it ourselves.
        leaf.grad = Tensor._wrap(g if owned_by_us else g.copy())
    else:
        leaf.grad.data += g
