"""Fast paths: the same ops as ``tinygnet.functional``, computed faster on one device.

Each fast path is a ``Function`` that subclasses the reference op it
replaces and registers itself for one device (``dispatch.register_fast``);
``Function.apply`` picks it there, and ``tinygnet.use_fast(False)`` turns
them all off. The tests compare every fast path with its reference
(``tests/kernels/``).

=====================  ======  ==========================================
reference op           device  fast path
=====================  ======  ==========================================
conv.Conv2d            cpu     cpu_conv.Conv2dOneGemm
pool.MaxPool2d         cpu     cpu_pool.MaxPool2dFlatPasses
pool.AvgPool2d         cpu     cpu_pool.AvgPool2dFlatPasses
norm.BatchNorm         cpu     cpu_norm.BatchNormChunked
activation.ReLU        cpu     cpu_activation.ReLUBlocks
conv.Conv2d            cuda    cuda.Conv2dCudaIm2col
pool.MaxPool2d         cuda    cuda.MaxPool2dCuda
norm.LocalResponseNorm cuda    cuda.LocalResponseNormCuda
activation.ReLU        cuda    cuda.ReLUCuda
loss.CrossEntropy      cuda    cuda.CrossEntropyCuda
=====================  ======  ==========================================

The machinery the CPU paths share: ``threads`` (blocks of work on tinygnet's
CPU threads, BLAS kept to one thread while the fast paths are on), ``moves``
(planes moved by a few positions in one flat copy: centred stride-1 windows
without a padded copy, for max pooling and the convolution) and
``workspaces`` (scratch arrays reused from call to call, and
``keep_freed_memory``, which a program calls to have every array's memory
reused from step to step). The CUDA C sources and their launchers are in
``cuda_kernels``.
"""
from . import cpu_activation, cpu_conv, cpu_norm, cpu_pool, cuda   # importing them registers the fast paths
from .threads import get_num_threads, set_num_threads

__all__ = ["get_num_threads", "set_num_threads"]
