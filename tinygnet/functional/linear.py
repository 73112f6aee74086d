"""The fully connected layer: linear(x, weight, bias) = x @ weight^T + bias."""
from __future__ import annotations

from ..tensor import Function
from .checks import check_float

__all__ = ["linear"]


class Linear(Function):
    """y = x @ W^T + b with x (N, in), W (out, in), b (out,), y (N, out).

    x may have extra leading dims (*, in), as in PyTorch; they are treated as
    a batch. gx = gy @ W,  gW = gy^T @ x,  gb = gy summed over the batch.
    """

    def forward(self, x, W, b):
        y = x @ W.T
        if b is not None:
            y += b
        need_gx, need_gW = self.needs_input_grad[:2]
        self.x = x if need_gW else None       # gW needs x, gx needs W
        self.W = W if need_gx else None
        return y

    def backward(self, gy):
        need_gx, need_gW, need_gb = self.needs_input_grad
        gy2 = gy.reshape(-1, gy.shape[-1])                  # (N, out)
        gx = gy @ self.W if need_gx else None
        gW = gy2.T @ self.x.reshape(-1, self.x.shape[-1]) if need_gW else None
        gb = gy2.sum(axis=0) if need_gb else None
        return gx, gW, gb


def linear(x, weight, bias=None):
    """x @ weight^T + bias; weight is (out_features, in_features) as in PyTorch."""
    op = "linear"
    if weight.ndim != 2:
        raise ValueError(f"{op}: weight must be 2-D (out_features, in_features), "
                         f"got shape {tuple(weight.shape)}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: input of shape {tuple(x.shape)} does not match weight of "
                         f"shape {tuple(weight.shape)} (input's last dim must be "
                         f"in_features = {weight.shape[1]})")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},) for weight of "
                         f"shape {tuple(weight.shape)}, got {tuple(bias.shape)}")
    check_float(x, op)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} is {t.dtype} but the input is {x.dtype}; "
                            f"convert one with .to(dtype=...)")
    return Linear.apply(x, weight, bias)
