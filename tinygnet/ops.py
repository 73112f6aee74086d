"""The elementary ops behind Tensor's operators and methods (+, *, @, x[i], sum, reshape, ...).

Each is a ``Function`` (forward and backward side by side), as the ops of
``tinygnet.functional``; at the end of the file, Tensor's operators and
methods that run them (``Tensor.__add__`` runs ``Add``, ...) are set on Tensor.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .backend import get_array_module
from .conversion import _check_float_dtypes, _operand_array
from .tensor import Function, Tensor


def _lift(value, like: Tensor) -> Tensor:
    """The other operand of an operator as a Tensor of ``like``'s dtype and device.

    Tensors pass through (a float tensor of another precision is refused);
    numbers, lists and arrays are converted by ``conversion._operand_array``.
    """
    if isinstance(value, Tensor):
        _check_float_dtypes(like.dtype, value.dtype)
        return value
    return Tensor._wrap(_operand_array(value, like.data))


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
        # d(a/b)/da = 1/b and d(a/b)/db = -a/b^2: b serves both gradients, a only b's.
        self.a = a if self.needs_input_grad[1] else None
        self.b = b if any(self.needs_input_grad) else None
        self.a_shape, self.b_shape = a.shape, b.shape
        return a / b

    def backward(self, gy):
        ga = unbroadcast(gy / self.b, self.a_shape) if self.needs_input_grad[0] else None
        gb = (unbroadcast(-gy * self.a / (self.b * self.b), self.b_shape)
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


# --------------------------------------------------------------------------
# Tensor's operators and methods that run these ops, set on Tensor below
# --------------------------------------------------------------------------
class _TensorMethods:
    """Tensor's operators (arithmetic, comparisons, indexing) and its math, shape and
    conversion methods, written here beside the ops they run.

    The engine (``tensor.py``) cannot import this module (it is built on the
    engine), so the loop after this class copies each method onto Tensor:
    ``x + y`` calls ``_TensorMethods.__add__`` as Tensor's own ``__add__``.
    """

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


for _name, _member in vars(_TensorMethods).items():
    if callable(_member) or isinstance(_member, property):
        setattr(Tensor, _name, _member)
