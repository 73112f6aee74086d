"""Stateless ops, by family. Imported as ``import tinygnet.functional as F``.

Names and arguments follow ``torch.nn.functional``. Each op is a Function
subclass (forward and backward side by side) plus the lowercase function
you call.
"""
from .activation import dropout, log_softmax, relu, softmax
from .conv import conv2d
from .linear import linear
from .loss import cross_entropy, nll_loss
from .norm import batch_norm, local_response_norm
from .pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .shape import cat, flatten

__all__ = [
    "conv2d",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
    "linear",
    "relu", "dropout", "softmax", "log_softmax",
    "local_response_norm", "batch_norm",
    "cat", "flatten",
    "cross_entropy", "nll_loss",
]
