"""tinygnet's GoogLeNet written again in PyTorch, for the CPU benchmark only.

Same modules, same names, same order of operations as
``tinygnet/models/googlenet.py``, so ``load_tinygnet_state_dict`` can copy a
tinygnet model's weights (and batch-norm statistics) into it and both
networks compute the same logits. PyTorch is a benchmark-only dependency
(the ``bench`` extra); nothing in ``tinygnet/`` imports this file.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Outputs = namedtuple("Outputs", ["logits", "aux1", "aux2"])


def scale_channels(channels, width):
    return max(1, int(channels * width + 0.5))


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
        self.conv1 = ConvUnit(3, c(64), 3, stride=stem_stride, padding=1, batchnorm=bn)
        self.conv2_reduce = ConvUnit(c(64), c(64), 1, batchnorm=bn)
        self.conv2 = ConvUnit(c(64), c(192), 3, padding=1, batchnorm=bn)
        self.inception3a = Inception(c(192), *c(64, 96, 128, 16, 32, 32), batchnorm=bn)
        self.inception3b = Inception(self.inception3a.out_channels,
                                     *c(128, 128, 192, 32, 96, 64), batchnorm=bn)
        self.pool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(self.inception3b.out_channels,
                                     *c(192, 96, 208, 16, 48, 64), batchnorm=bn)
        self.inception4b = Inception(self.inception4a.out_channels,
                                     *c(160, 112, 224, 24, 64, 64), batchnorm=bn)
        self.inception4c = Inception(self.inception4b.out_channels,
                                     *c(128, 128, 256, 24, 64, 64), batchnorm=bn)
        self.inception4d = Inception(self.inception4c.out_channels,
                                     *c(112, 144, 288, 32, 64, 64), batchnorm=bn)
        self.inception4e = Inception(self.inception4d.out_channels,
                                     *c(256, 160, 320, 32, 128, 128), batchnorm=bn)
        self.pool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception5a = Inception(self.inception4e.out_channels,
                                     *c(256, 160, 320, 32, 128, 128), batchnorm=bn)
        self.inception5b = Inception(self.inception5a.out_channels,
                                     *c(384, 192, 384, 48, 128, 128), batchnorm=bn)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.inception5b.out_channels, num_classes)
        if aux:
            pooled = 2 if stem_stride == 2 else 4
            head = dict(conv_channels=c(128), fc_channels=c(1024), pooled_size=pooled,
                        dropout=aux_dropout, batchnorm=bn)
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
