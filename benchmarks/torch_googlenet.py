"""tinygnet's GoogLeNet written again in PyTorch, for the CPU benchmark only.

Same modules, same names, same order of operations as
``tinygnet/models/googlenet.py``, so ``load_tinygnet_state_dict`` can copy a
tinygnet model's weights (and batch-norm statistics) into it and both
networks compute the same logits. The channel counts are tinygnet's own
(the paper's Table 1, ``tinygnet.models.googlenet``), so the two networks
cannot drift apart. PyTorch is a benchmark-only dependency (the ``bench``
extra); nothing in ``tinygnet/`` imports this file.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tinygnet.models.googlenet import (AUX_CHANNELS, INCEPTION_CHANNELS, STEM_CHANNELS,
                                       scale_channels)

Outputs = namedtuple("Outputs", ["logits", "aux1", "aux2"])


class ConvUnit(nn.Module):
    """conv -> (BatchNorm2d) -> ReLU, keyed as tinygnet's: ``<name>.weight``, ``<name>.bn.*``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 batchnorm=False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = None if batchnorm else nn.Parameter(torch.zeros(out_channels))
        self.stride, self.padding = stride, padding
        self.bn = nn.BatchNorm2d(out_channels) if batchnorm else None
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x)


class Inception(nn.Module):
    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj,
                 batchnorm=False):
        super().__init__()
        bn = batchnorm
        self.branch1 = ConvUnit(in_channels, ch1x1, 1, batchnorm=bn)
        self.branch2_reduce = ConvUnit(in_channels, ch3x3red, 1, batchnorm=bn)
        self.branch2 = ConvUnit(ch3x3red, ch3x3, 3, padding=1, batchnorm=bn)
        self.branch3_reduce = ConvUnit(in_channels, ch5x5red, 1, batchnorm=bn)
        self.branch3 = ConvUnit(ch5x5red, ch5x5, 5, padding=2, batchnorm=bn)
        self.branch4_pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.branch4 = ConvUnit(in_channels, pool_proj, 1, batchnorm=bn)
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x):
        b1 = self.branch1(x)
        b2 = self.branch2(self.branch2_reduce(x))
        b3 = self.branch3(self.branch3_reduce(x))
        b4 = self.branch4(self.branch4_pool(x))
        return torch.cat([b1, b2, b3, b4], 1)


class InceptionAux(nn.Module):
    def __init__(self, in_channels, num_classes, conv_channels, fc_channels, pooled_size,
                 dropout, batchnorm):
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3)
        self.conv = ConvUnit(in_channels, conv_channels, 1, batchnorm=batchnorm)
        self.fc1 = nn.Linear(conv_channels * pooled_size * pooled_size, fc_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(fc_channels, num_classes)

    def forward(self, x):
        x = self.conv(self.pool(x)).flatten(1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


class GoogLeNet(nn.Module):
    """The cifar config of tinygnet's GoogLeNet (3 x 32 x 32 input)."""

    def __init__(self, num_classes=10, width=1.0, batchnorm=False, dropout=0.4,
                 aux_dropout=0.7, stem_stride=1, aux=True):
        super().__init__()

        def c(*channels):
            scaled = [scale_channels(ch, width) for ch in channels]
            return scaled[0] if len(scaled) == 1 else scaled

        bn = batchnorm
        conv1_channels, conv2_reduce_channels, conv2_channels = c(*STEM_CHANNELS)
        self.conv1 = ConvUnit(3, conv1_channels, 3, stride=stem_stride, padding=1, batchnorm=bn)
        self.conv2_reduce = ConvUnit(conv1_channels, conv2_reduce_channels, 1, batchnorm=bn)
        self.conv2 = ConvUnit(conv2_reduce_channels, conv2_channels, 3, padding=1, batchnorm=bn)

        def inception(name, in_channels):
            return Inception(in_channels, *c(*INCEPTION_CHANNELS[name]), batchnorm=bn)

        self.inception3a = inception("inception3a", conv2_channels)
        self.inception3b = inception("inception3b", self.inception3a.out_channels)
        self.pool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = inception("inception4a", self.inception3b.out_channels)
        self.inception4b = inception("inception4b", self.inception4a.out_channels)
        self.inception4c = inception("inception4c", self.inception4b.out_channels)
        self.inception4d = inception("inception4d", self.inception4c.out_channels)
        self.inception4e = inception("inception4e", self.inception4d.out_channels)
        self.pool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception5a = inception("inception5a", self.inception4e.out_channels)
        self.inception5b = inception("inception5b", self.inception5a.out_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.inception5b.out_channels, num_classes)
        if aux:
            pooled = 2 if stem_stride == 2 else 4
            head = dict(conv_channels=c(AUX_CHANNELS.conv), fc_channels=c(AUX_CHANNELS.fc1),
                        pooled_size=pooled, dropout=aux_dropout, batchnorm=bn)
            self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes, **head)
            self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes, **head)
        else:
            self.aux1 = self.aux2 = None

    def forward(self, x):
        x = self.conv2(self.conv2_reduce(self.conv1(x)))
        x = self.pool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.training and self.aux1 is not None else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.training and self.aux2 is not None else None
        x = self.pool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = self.fc(self.dropout(x))
        return Outputs(logits, aux1, aux2) if self.training else logits


def googlenet_loss(outputs, targets, aux_weight=0.3, label_smoothing=0.0):
    """CE(logits) + aux_weight * (CE(aux1) + CE(aux2)), as tinygnet's ``googlenet_loss``."""
    ce = lambda z: F.cross_entropy(z, targets, label_smoothing=label_smoothing)  # noqa: E731
    total = ce(outputs.logits)
    if outputs.aux1 is not None:
        total = total + aux_weight * (ce(outputs.aux1) + ce(outputs.aux2))
    return total


def load_tinygnet_state_dict(model: GoogLeNet, state_dict) -> None:
    """Copy a tinygnet ``state_dict()`` (name -> NumPy array) into ``model``, checking every key."""
    own = model.state_dict()
    expected = {k for k in own if not k.endswith("num_batches_tracked")}
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise KeyError(f"state_dict mismatch: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for name, array in state_dict.items():
            target = own[name]
            value = torch.from_numpy(np.ascontiguousarray(array)).to(target.dtype)
            if value.shape != target.shape:
                raise ValueError(f"{name}: tinygnet shape {tuple(value.shape)}, "
                                 f"torch shape {tuple(target.shape)}")
            target.copy_(value)
