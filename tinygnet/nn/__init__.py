"""Layers that own parameters, and the Module machinery behind them (as ``torch.nn``).

``Module`` (module.py) keeps parameters, buffers and child modules and gives
``parameters()``, ``train()/eval()``, ``to()``, ``state_dict()``; the layers
(layers.py) are thin wrappers over ``tinygnet.functional``; ``init`` holds
the initialisation rules.
"""
from . import init
from .module import IncompatibleKeys, Module, Parameter, Sequential
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten,
                     Linear, LocalResponseNorm, MaxPool2d, ReLU)

__all__ = ["Module", "Parameter", "Sequential", "IncompatibleKeys", "init",
           "Conv2d", "Linear", "BatchNorm2d", "LocalResponseNorm", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "Dropout", "ReLU", "Flatten"]
