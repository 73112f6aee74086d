"""CUDA kernels for the ops where generic CuPy array code is slow.

The ops in ``tinygnet.functional`` are written once with ``xp.*`` and run on
both devices. A few of them, on the GPU, take a short branch into a kernel
from ``tinygnet.cuda.kernels`` instead (im2col/col2im, max pooling, LRN,
softmax cross-entropy, the ReLU gradient). The NumPy code beside each branch
is the plain twin the kernel is tested against (``tests/cuda/``).

Nothing here imports CuPy at import time: the kernels are built, and
compiled by CuPy (NVRTC), the first time they are called.
"""
from . import kernels

__all__ = ["kernels"]
