"""Shape ops: cat (the Inception module's channel concatenation) and flatten."""
from __future__ import annotations

from ..backend import get_array_module
from ..tensor import Function

__all__ = ["cat", "flatten"]


class Cat(Function):
    """y = the inputs joined along ``dim``;  gx_i = the slice of gy that x_i became.

    In an Inception module four branches (N, C_i, H, W) become one
    (N, C_1 + C_2 + C_3 + C_4, H, W); backward hands each branch its channels.
    """

    def forward(self, *xs, dim):
        xp = get_array_module(*xs)
        self.dim, self.sizes = dim, [x.shape[dim] for x in xs]
        return xp.concatenate(xs, axis=dim)

    def backward(self, gy):
        xp = get_array_module(gy)
        ends = [sum(self.sizes[:i + 1]) for i in range(len(self.sizes) - 1)]
        return tuple(xp.split(gy, ends, axis=self.dim))   # views of gy, no copies


def cat(tensors, dim=1):
    """Concatenate tensors of equal shape except along ``dim`` (default 1: channels)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    first = tensors[0]
    ndim = first.ndim
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < max(ndim, 1) \
            or ndim == 0:
        raise ValueError(f"cat: dim {dim!r} is out of range for tensors of shape "
                         f"{tuple(first.shape)}")
    dim %= ndim
    shapes = [tuple(t.shape) for t in tensors]
    dtypes = {str(t.dtype) for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"cat: tensors have different dtypes ({', '.join(sorted(dtypes))}); "
                        f"convert them to one with .to(dtype=...)")
    for shape in shapes:
        if len(shape) != ndim or shape[:dim] + shape[dim + 1:] != \
                shapes[0][:dim] + shapes[0][dim + 1:]:
            raise ValueError(f"cat: shapes {shapes} must match except in dim {dim}")
    return Cat.apply(*tensors, dim=dim)


def flatten(x, start_dim=1, end_dim=-1):
    """Merge dims start_dim..end_dim into one: (N, C, H, W) -> (N, C*H*W) by default."""
    ndim = max(x.ndim, 1)
    for name, d in (("start_dim", start_dim), ("end_dim", end_dim)):
        if not -ndim <= d < ndim:
            raise ValueError(f"flatten: {name} {d} is out of range for a tensor of shape "
                             f"{tuple(x.shape)}")
    start, end = start_dim % ndim, end_dim % ndim
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                         f"for a tensor of shape {tuple(x.shape)}")
    return x.reshape(tuple(x.shape[:start]) + (-1,) + tuple(x.shape[end + 1:]))
