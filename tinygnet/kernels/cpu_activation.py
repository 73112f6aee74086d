"""The fast CPU ReLU: blocks of the batch on several threads, each writing into one output array.

The reference (``functional/activation.py``) is ``xp.maximum(x, 0)`` forward
and ``gy * (y > 0)`` backward, each one NumPy call on one core. This fast
path computes the same values, cut along the batch into blocks that
tinygnet's CPU threads run at once (``threads.parallel_for``), each block
writing its part of one output array allocated up front.

In GoogLeNet with batch norm every ReLU follows a batch norm. The two used to
be one op (``batch_norm_relu``) so that the fast batch norm could take the
ReLU in place on its own output. They are two ops now, each with its own
fast path, and the ReLU is not taken in place: batch norm's output is a
Tensor that someone may still hold (a forward hook on the ``bn`` layer, a
variable of the caller), and overwriting it would change it under them
(PyTorch leaves that choice to the caller, ``relu(x, inplace=True)``). So
a training step keeps one more array per conv unit, batch norm's output,
until its backward pass; the fast batch norm makes up for it by keeping no
``x - mean`` of its own (``cpu_norm.py``).
"""
from __future__ import annotations

import numpy as np

from ..dispatch import register_fast
from ..functional.activation import ReLU
from .threads import parallel_for

__all__ = ["ReLUBlocks"]

# Fewer elements than this per block run as one block, on the calling thread:
# the same threshold as the fast batch norm (cpu_norm.py), whose blocks took
# the ReLU when the two were one op.
MIN_BLOCK_ELEMENTS = 1 << 22


@register_fast(ReLU, "cpu")
class ReLUBlocks(ReLU):
    """Replaces functional.activation.ReLU on the CPU: blocks of samples on threads.

    y = max(x, 0) and gx = gy * (y > 0), as the reference, each written into
    one preallocated array, block by block (``out=``).
    """

    def forward(self, x):
        if x.ndim == 0:
            return super().forward(x)
        y = np.empty(x.shape, dtype=x.dtype)

        def relu_rows(n0, n1):            # samples n0..n1
            np.maximum(x[n0:n1], 0, out=y[n0:n1])

        parallel_for(x.shape[0], relu_rows, min_chunk=_rows_per_block(x))
        self.y = y if self.needs_input_grad[0] else None
        return y

    def backward(self, gy):
        if gy.ndim == 0:
            return super().backward(gy)
        gx = np.empty(gy.shape, dtype=gy.dtype)

        def backward_rows(n0, n1):        # gy may be a strided view (a slice of cat's gradient)
            np.multiply(gy[n0:n1], self.y[n0:n1] > 0, out=gx[n0:n1])

        parallel_for(gy.shape[0], backward_rows, min_chunk=_rows_per_block(gy))
        return gx


def _rows_per_block(a):
    """The fewest samples (rows of axis 0) a block may hold."""
    per_row = max(1, a.size // max(1, a.shape[0]))
    return MIN_BLOCK_ELEMENTS // per_row + 1
