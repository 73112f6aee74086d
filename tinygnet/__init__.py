"""tinygnet: a small, honest deep-learning engine that trains GoogLeNet.

NumPy on the CPU, CuPy on an NVIDIA GPU, one autograd engine, every op with its
forward and backward side by side. Start with ``tinygnet/tensor.py``.
"""
from .backend import get_num_threads, is_cuda_available, manual_seed, set_num_threads
from .tensor import Function, Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad, tensor
from .gradcheck import gradcheck, GradcheckError
from . import functional, nn, models
from .summary import summary

__version__ = "0.1.0"

__all__ = ["Tensor", "Function", "tensor", "as_tensor", "no_grad", "enable_grad",
           "is_grad_enabled", "manual_seed", "is_cuda_available", "set_num_threads",
           "get_num_threads", "gradcheck",
           "GradcheckError", "functional", "nn", "models", "summary"]
