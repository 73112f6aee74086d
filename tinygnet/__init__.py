"""tinygnet: a small, honest deep-learning engine that trains GoogLeNet.

NumPy on the CPU, CuPy on an NVIDIA GPU, one autograd engine, every op with its
forward and backward side by side. Start with ``tinygnet/tensor.py``.
"""
from .backend import is_cuda_available, manual_seed
from .tensor import Function, Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad, tensor
from . import ops               # sets Tensor's operators (+, *, @, x[i], sum, ...)
from .dispatch import use_fast
from .gradcheck import gradcheck, GradcheckError
from . import functional, nn, models
from . import kernels           # registers the fast paths of the CPU and the GPU
from .kernels import get_num_threads, set_num_threads
from .summary import summary

__version__ = "0.1.0"

__all__ = ["Tensor", "Function", "tensor", "as_tensor", "no_grad", "enable_grad",
           "is_grad_enabled", "manual_seed", "is_cuda_available", "use_fast",
           "set_num_threads", "get_num_threads", "gradcheck", "GradcheckError",
           "functional", "nn", "models", "summary"]
