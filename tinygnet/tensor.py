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
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import backend, dispatch
from .backend import get_array_module

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
    ``self`` exactly what ``backward`` needs and nothing more.
    ``self.needs_input_grad`` (a tuple of bools, set before ``forward``) lets
    an op skip work for inputs that need no gradient.
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
def _python_to_array(data, dtype):
    """Python numbers and (nested) lists become float32 unless a dtype is given."""
    array = np.asarray(data)
    if dtype is None:
        if array.dtype.kind in "fiub" and not isinstance(data, np.ndarray):
            dtype = np.float32
    return array if dtype is None else array.astype(dtype, copy=False)


class Tensor:
    """An array with an optional gradient and a link to the op that made it.

    Attributes: ``data`` (the NumPy/CuPy array), ``grad`` (a Tensor or None),
    ``requires_grad``. Build one with ``tinygnet.tensor(...)``.
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

    def to(self, device=None, dtype=None) -> "Tensor":
        """A copy on ``device`` and/or of ``dtype`` (self if nothing changes).

        Differentiable, like PyTorch's: the gradient flows back to ``self``.
        """
        return Convert.apply(self, device=device, dtype=dtype)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

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

    # ----------------------------------------------------------- operators
    def __add__(self, other): return Add.apply(self, _lift(other, self))
    def __radd__(self, other): return Add.apply(_lift(other, self), self)
    def __sub__(self, other): return Sub.apply(self, _lift(other, self))
    def __rsub__(self, other): return Sub.apply(_lift(other, self), self)
    def __mul__(self, other): return Mul.apply(self, _lift(other, self))
    def __rmul__(self, other): return Mul.apply(_lift(other, self), self)
    def __truediv__(self, other): return Div.apply(self, _lift(other, self))
    def __rtruediv__(self, other): return Div.apply(_lift(other, self), self)
    def __neg__(self): return Neg.apply(self)
    def __matmul__(self, other): return MatMul.apply(self, _lift(other, self))
    def __rmatmul__(self, other): return MatMul.apply(_lift(other, self), self)
    def __getitem__(self, index): return GetItem.apply(self, index=_index_data(index))

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            raise TypeError("tensor ** tensor is not supported; use a Python number exponent")
        return Pow.apply(self, exponent=exponent)

    # Comparisons give plain (non-differentiable) tensors, as in PyTorch.
    def __eq__(self, other): return Tensor._wrap(self.data == _raw(other))
    def __ne__(self, other): return Tensor._wrap(self.data != _raw(other))
    def __lt__(self, other): return Tensor._wrap(self.data < _raw(other))
    def __le__(self, other): return Tensor._wrap(self.data <= _raw(other))
    def __gt__(self, other): return Tensor._wrap(self.data > _raw(other))
    def __ge__(self, other): return Tensor._wrap(self.data >= _raw(other))
    __hash__ = object.__hash__

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    # ------------------------------------------------------------- methods
    def sum(self, dim=None, keepdim=False): return Sum.apply(self, axis=_axes(dim, self.ndim), keepdims=keepdim)
    def mean(self, dim=None, keepdim=False): return Mean.apply(self, axis=_axes(dim, self.ndim), keepdims=keepdim)
    def max(self, dim=None, keepdim=False): return Max.apply(self, axis=_axes(dim, self.ndim), keepdims=keepdim)

    def argmax(self, dim=None):
        return Tensor._wrap(self.data.argmax(axis=dim))

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        start = start_dim % max(self.ndim, 1)
        end = end_dim % max(self.ndim, 1)
        shape = self.shape[:start] + (-1,) + self.shape[end + 1:]
        return self.reshape(shape)

    def permute(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        if sorted(d % self.ndim for d in dims) != list(range(self.ndim)):
            raise ValueError(f"permute{tuple(dims)} is not a permutation of the {self.ndim} dims")
        return Permute.apply(self, axes=tuple(d % self.ndim for d in dims))

    def transpose(self, dim0=None, dim1=None):
        """``transpose(dim0, dim1)`` swaps two dims; ``transpose()`` reverses all (like ``.T``)."""
        if dim0 is None and dim1 is None:
            return self.permute(tuple(reversed(range(self.ndim))))
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(tuple(axes))

    T = property(lambda self: self.transpose())

    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def sqrt(self): return self ** 0.5


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


def _explain_bad_numbers(data, prefix, where="data") -> None:
    """Raise, in tinygnet's words, what NumPy refused in its own: a ragged nest of lists
    (``[[1, 2], [3]]``) or an item that is not a number (``["x"]``). Returns if it finds neither."""
    if isinstance(data, (list, tuple)):
        shapes = ["is a number" if not isinstance(item, (list, tuple)) else f"has length {len(item)}"
                  for item in data]
        for i, shape in enumerate(shapes):
            if shape != shapes[0]:
                raise ValueError(f"{prefix}{where} is ragged: {where}[0] {shapes[0]} but "
                                 f"{where}[{i}] {shape}; every row of a tensor has the same "
                                 f"length")
        for i, item in enumerate(data):
            _explain_bad_numbers(item, prefix, f"{where}[{i}]")
    elif not isinstance(data, (bool, int, float, np.number, np.bool_)):
        raise TypeError(f"{prefix}expected numbers (float, int or bool) or nested lists of them; "
                        f"{where} is {type(data).__name__} ({data!r:.40})")


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """``value`` as a Tensor (no copy if it already is one)."""
    if isinstance(value, Tensor):
        return value
    return _lift(value, like) if like is not None else Tensor(value)


def _lift(value, like: Tensor) -> Tensor:
    """A constant operand as a Tensor of ``like``'s dtype and device.

    Python numbers take the tensor's dtype (``x * 2`` stays float32).
    A float tensor of another precision is refused: no silent float64.
    """
    if isinstance(value, Tensor):
        if value.dtype != like.dtype and value.dtype.kind == "f" and like.dtype.kind == "f":
            raise TypeError(f"operands have different float dtypes ({like.dtype} and "
                            f"{value.dtype}); convert one with .to(dtype=...)")
        return value
    xp = get_array_module(like.data)
    if isinstance(value, (int, float, bool, np.number)):
        return Tensor._wrap(xp.asarray(value, dtype=like.dtype))
    if not hasattr(value, "dtype"):
        if not isinstance(value, (list, tuple)):     # a str, None, a dict...: not an operand
            raise TypeError(f"a Tensor combines with numbers, arrays, lists of numbers and "
                            f"Tensors, not {type(value).__name__} ({value!r:.40})")
        try:
            return Tensor._wrap(xp.asarray(value, dtype=like.dtype))
        except (ValueError, TypeError):
            _explain_bad_numbers(value, "a Tensor combines with numbers, arrays, lists of numbers "
                                        "and Tensors: ", "the other operand")
            raise
    array = xp.asarray(value)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"a Tensor combines with numbers, arrays, lists of numbers and Tensors, "
                        f"not an array of dtype {array.dtype}")
    if array.dtype.kind == "f" and array.dtype != like.dtype:
        raise TypeError(f"operands have different float dtypes ({like.dtype} and "
                        f"{array.dtype}); convert one first")
    return Tensor._wrap(array)


def _raw(value):
    return value.data if isinstance(value, Tensor) else value


def _index_data(index):
    """Tensors used as indices become their arrays."""
    if isinstance(index, tuple):
        return tuple(_raw(i) for i in index)
    return _raw(index)


def _axes(dim, ndim):
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -ndim <= d < max(ndim, 1):
            raise ValueError(f"dim {d} is out of range for a tensor with {ndim} dims")
    return tuple(d % max(ndim, 1) for d in dims)


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


# --------------------------------------------------------------------------
# Elementary ops (the ones behind Tensor's operators)
# --------------------------------------------------------------------------
def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the gradient of NumPy broadcasting.

    If x of shape (C, 1) was broadcast to (N, C, W), each x element was used
    N*W times, so its gradient is the sum over those positions.
    """
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and g.shape[i + extra] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _check_broadcast(op, a, b):
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be "
                         f"broadcast together") from None


class Add(Function):
    def forward(self, a, b):
        _check_broadcast("add", a, b)
        self.a_shape, self.b_shape = a.shape, b.shape
        return a + b

    def backward(self, gy):
        return unbroadcast(gy, self.a_shape), unbroadcast(gy, self.b_shape)


class Sub(Function):
    def forward(self, a, b):
        _check_broadcast("subtract", a, b)
        self.a_shape, self.b_shape = a.shape, b.shape
        return a - b

    def backward(self, gy):
        return unbroadcast(gy, self.a_shape), unbroadcast(-gy, self.b_shape)


class Mul(Function):
    def forward(self, a, b):
        _check_broadcast("multiply", a, b)
        # d(ab)/da = b and d(ab)/db = a: keep each only if the other needs a gradient.
        self.a = a if self.needs_input_grad[1] else None
        self.b = b if self.needs_input_grad[0] else None
        self.a_shape, self.b_shape = a.shape, b.shape
        return a * b

    def backward(self, gy):
        ga = unbroadcast(gy * self.b, self.a_shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(gy * self.a, self.b_shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        _check_broadcast("divide", a, b)
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga = unbroadcast(gy / self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = (unbroadcast(-gy * self.a / (self.b * self.b), self.b.shape)
              if self.needs_input_grad[1] else None)
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(Function):
    """y = x ** p for a constant Python number p;  gx = gy * p * x ** (p - 1)."""

    def forward(self, x, exponent):
        self.x, self.p = x, exponent
        return x ** exponent

    def backward(self, gy):
        return gy * (self.p * self.x ** (self.p - 1))


class Exp(Function):
    def forward(self, x):
        xp = get_array_module(x)
        self.y = xp.exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        xp = get_array_module(x)
        self.x = x
        return xp.log(x)

    def backward(self, gy):
        return gy / self.x


class MatMul(Function):
    """y = a @ b for 2-D (or batched) operands.  ga = gy @ b^T,  gb = a^T @ gy."""

    def forward(self, a, b):
        if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not "
                             f"match (inner dimensions differ)")
        if a.ndim == 1 or b.ndim == 1:
            raise ValueError("matmul: 1-D operands are not supported; reshape to 2-D")
        self.a = a if self.needs_input_grad[1] else None
        self.b = b if self.needs_input_grad[0] else None
        self.a_shape, self.b_shape = a.shape, b.shape
        return a @ b

    def backward(self, gy):
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(gy @ self.b.swapaxes(-1, -2), self.a_shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(self.a.swapaxes(-1, -2) @ gy, self.b_shape)
        return ga, gb


class GetItem(Function):
    """y = x[index];  gx is zeros with gy scattered back (summing repeated indices)."""

    def forward(self, x, index):
        self.x_shape, self.x_dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        xp.add.at(gx, self.index, gy)   # correct even when an index repeats
        return gx


class Sum(Function):
    def forward(self, x, axis, keepdims):
        self.x_shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        if not self.keepdims and self.axis is not None:
            gy = xp.expand_dims(gy, self.axis)
        return xp.broadcast_to(gy, self.x_shape).copy()


class Mean(Function):
    def forward(self, x, axis, keepdims):
        self.x_shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.mean(axis=axis, keepdims=keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        count = int(np.prod(self.x_shape)) if self.axis is None else int(
            np.prod([self.x_shape[a] for a in self.axis]))
        if not self.keepdims and self.axis is not None:
            gy = xp.expand_dims(gy, self.axis)
        return xp.broadcast_to(gy / count, self.x_shape).copy()


class Max(Function):
    """Gradient goes to the maximum; ties share it equally (as PyTorch's max over all)."""

    def forward(self, x, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims
        y = x.max(axis=axis, keepdims=True)
        self.mask = x == y
        return y if keepdims else (y.reshape(()) if axis is None else y.squeeze(axis))

    def backward(self, gy):
        xp = get_array_module(gy)
        if not self.keepdims:
            gy = gy.reshape(()) if self.axis is None else xp.expand_dims(gy, self.axis)
        count = self.mask.sum(axis=self.axis, keepdims=True).astype(gy.dtype)  # not int64:
        return self.mask * (gy / count)                          # float32 / int64 is float64


class Reshape(Function):
    def forward(self, x, shape):
        self.x_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {tuple(x.shape)} "
                             f"({x.size} elements) to {shape}") from None

    def backward(self, gy):
        return gy.reshape(self.x_shape)


class Permute(Function):
    def forward(self, x, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, gy):
        return gy.transpose(np.argsort(self.axes))


class Convert(Function):
    """Change device and/or dtype; the gradient goes back to the original."""

    def forward(self, x, device, dtype):
        self.device = backend.device_of(x)
        self.dtype = x.dtype
        y = x if dtype is None else x.astype(dtype, copy=False)
        return y if device is None else backend.to_device(y, device)

    def backward(self, gy):
        return backend.to_device(gy, self.device).astype(self.dtype, copy=False)
