"""GoogLeNet, from "Going Deeper with Convolutions" (Szegedy et al., 2014).

The network of the paper's Table 1: a stem of plain convolutions, nine
Inception modules (3a-3b, 4a-4e, 5a-5b) with max pools between the stages,
a global average pool, dropout and one linear classifier. During training
two auxiliary classifiers sit on the outputs of inception4a and inception4d;
their losses are added to the main one with weight 0.3 (``googlenet_loss``)
so that gradient reaches the lower layers by a short path.

Two input sizes:

* ``config="imagenet"``: 3 x 224 x 224, exactly Table 1 (spatial sizes 112,
  56, 28, 14, 7).
* ``config="cifar"``: 3 x 32 x 32. The stem becomes one 3x3 conv (stride 1)
  and the 1x1 + 3x3 pair, without the two stem pools and LRNs, so the
  Inception stages run at 32, 16 and 8 pixels. ``stem_stride=2`` halves that
  (16, 8, 4) for a cheaper network.

Every channel count is scaled by ``width`` (see ``scale_channels``), so the
same code builds the paper's network (width 1) and the tiny ones the
gradient checks use.
"""
from __future__ import annotations

import math
from collections import namedtuple

from .. import functional as F
from .. import nn
from ..tensor import Tensor

__all__ = ["GoogLeNet", "Inception", "InceptionAux", "ConvUnit", "GoogLeNetOutputs",
           "GoogLeNetLoss", "googlenet_loss", "scale_channels", "STEM_CHANNELS",
           "INCEPTION_CHANNELS", "AUX_CHANNELS", "INITS"]

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux1", "aux2"])
GoogLeNetOutputs.__doc__ = """The three heads' logits: the main head, then the heads on inception4a
and inception4d (each N x num_classes, or None when the model has ``aux=False``). What
``forward`` returns in training mode, and ``heads`` in either mode."""

GoogLeNetLoss = namedtuple("GoogLeNetLoss", ["total", "main", "aux1", "aux2"])
GoogLeNetLoss.__doc__ = """``total = main + aux_weight * (aux1 + aux2)``; the aux entries are None
when the outputs have no auxiliary logits."""

INPUT_SIZES = {"imagenet": 224, "cifar": 32}
INITS = ("he", "xavier", "gaussian")      # GoogLeNet(init=...): see the class docstring
XAVIER_BIAS = 0.2       # BVLC's bias for every layer that feeds a ReLU under "xavier"
GAUSSIAN_STD = 0.01     # the weights' std under "gaussian"

# The paper's Table 1, at width 1. The stem: conv1 (7x7, or 3x3 in the cifar config),
# conv2_reduce (1x1) and conv2 (3x3).
STEM_CHANNELS = (64, 64, 192)
InceptionChannels = namedtuple("InceptionChannels",
                               ["ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5", "pool_proj"])
INCEPTION_CHANNELS = {
    "inception3a": InceptionChannels(64, 96, 128, 16, 32, 32),        # out 256
    "inception3b": InceptionChannels(128, 128, 192, 32, 96, 64),      # out 480
    "inception4a": InceptionChannels(192, 96, 208, 16, 48, 64),       # out 512
    "inception4b": InceptionChannels(160, 112, 224, 24, 64, 64),      # out 512
    "inception4c": InceptionChannels(128, 128, 256, 24, 64, 64),      # out 512
    "inception4d": InceptionChannels(112, 144, 288, 32, 64, 64),      # out 528
    "inception4e": InceptionChannels(256, 160, 320, 32, 128, 128),    # out 832
    "inception5a": InceptionChannels(256, 160, 320, 32, 128, 128),    # out 832
    "inception5b": InceptionChannels(384, 192, 384, 48, 128, 128),    # out 1024
}
# The auxiliary heads (the paper's section 5): a 1x1 conv with 128 filters, then fc1 with 1024.
AuxChannels = namedtuple("AuxChannels", ["conv", "fc1"])
AUX_CHANNELS = AuxChannels(128, 1024)


def scale_channels(channels: int, width: float) -> int:
    """A channel count scaled by ``width``, rounded to nearest, at least 1."""
    return max(1, int(channels * width + 0.5))


class ConvUnit(nn.Conv2d):
    """A conv followed by ReLU; with ``batchnorm=True``, conv (no bias) -> BatchNorm2d -> ReLU.

    It *is* the Conv2d (so its weight is ``<name>.weight``) with an optional
    ``bn`` child (``<name>.bn.weight``, ``<name>.bn.running_mean``, ...), as
    torchvision's ``BasicConv2d`` (whose conv is a child ``conv`` instead).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 batchnorm=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         bias=not batchnorm)
        self.bn = nn.BatchNorm2d(out_channels) if batchnorm else None

    def forward(self, x):
        x = super().forward(x)          # the conv
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x)


class Inception(nn.Module):
    """Four parallel branches over the same input, concatenated on channels.

    Arguments are the columns of the paper's Table 1::

        branch1:  1x1 conv, ch1x1
        branch2:  1x1 conv, ch3x3red  ->  3x3 conv (pad 1), ch3x3
        branch3:  1x1 conv, ch5x5red  ->  5x5 conv (pad 2), ch5x5
        branch4:  3x3 max pool (stride 1, pad 1)  ->  1x1 conv, pool_proj

    Every branch keeps H x W, so the output is
    N x (ch1x1 + ch3x3 + ch5x5 + pool_proj) x H x W. The 1x1 "reduce" convs
    shrink the channels before the expensive 3x3 and 5x5 ones: that is what
    keeps GoogLeNet at about 1.5 G multiply-adds.
    """

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
        self.in_channels = in_channels
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x):                                   # N x in_channels x H x W
        b1 = self.branch1(x)                                # N x ch1x1 x H x W
        b2 = self.branch2(self.branch2_reduce(x))           # N x ch3x3 x H x W
        b3 = self.branch3(self.branch3_reduce(x))           # N x ch5x5 x H x W
        b4 = self.branch4(self.branch4_pool(x))             # N x pool_proj x H x W
        return F.cat([b1, b2, b3, b4], dim=1)               # N x out_channels x H x W


class InceptionAux(nn.Module):
    """An auxiliary classifier (the paper's section 5), used in training only.

    5x5 average pool, stride 3 -> 1x1 conv, 128 + ReLU -> flatten ->
    fc1, 1024 + ReLU -> dropout (70%) -> fc2, num_classes.

    ``pooled_size`` is the side of the pooled map (4 for a 14x14 or 16x16
    input), so ``fc1`` takes ``conv_channels * pooled_size**2`` inputs.
    """

    def __init__(self, in_channels, num_classes, conv_channels=128, fc_channels=1024,
                 pooled_size=4, dropout=0.7, batchnorm=False):
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3)
        self.conv = ConvUnit(in_channels, conv_channels, 1, batchnorm=batchnorm)
        self.fc1 = nn.Linear(conv_channels * pooled_size * pooled_size, fc_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(fc_channels, num_classes)
        self.fc2.reset_parameters(nonlinearity="linear")   # feeds softmax, not a ReLU

    def forward(self, x):                  # N x 512 x 14 x 14 (inception4a; 528 for 4d)
        x = self.pool(x)                   # N x 512 x 4 x 4
        x = self.conv(x)                   # N x 128 x 4 x 4
        x = x.flatten(1)                   # N x 2048
        x = F.relu(self.fc1(x))            # N x 1024
        x = self.dropout(x)                # N x 1024
        return self.fc2(x)                 # N x num_classes


class GoogLeNet(nn.Module):
    """GoogLeNet (Inception v1) with its two auxiliary classifiers.

    Args:
        num_classes: size of the classifiers' outputs (not scaled by width).
        config: "imagenet" (3 x 224 x 224 input, Table 1) or "cifar" (3 x 32 x 32).
        aux: build the auxiliary heads on inception4a and inception4d.
        width: multiplies every channel count (convs, the aux conv's 128 and
            the aux fc's 1024): ``max(1, int(c * width + 0.5))``.
        batchnorm: conv units become conv (no bias) + BatchNorm2d + ReLU and
            the two LRNs of the imagenet stem are left out.
        dropout: before ``fc`` (the paper's 40%).
        aux_dropout: inside the aux heads (the paper's 70%).
        stem_stride: 1 or 2, cifar config only: the stride of ``conv1``. With 2
            the Inception stages run at 16, 8 and 4 pixels and the aux heads
            pool to 2 x 2 (so their ``fc1`` takes 128 * 4 inputs).
        init: "he", "xavier" or "gaussian": how the conv and linear layers
            start (below).

    ``forward(x)`` in training mode returns ``GoogLeNetOutputs(logits, aux1,
    aux2)``; in evaluation mode the logits Tensor alone, and the aux heads
    do not run (they are dead weight at inference). ``heads(x)`` returns all
    three in either mode.

    Initialisation (``init``), for every conv and linear layer. Each is
    judged by what it does to the variance of the signal through one layer
    ``y = W x + b``, ``x = relu(y_prev)``, with ``n`` the fan-in
    (``C_in * KH * KW``, or ``in_features``) and ``Var(w)`` the weights'
    variance. For ``y_prev`` symmetric around 0, ReLU keeps half of its
    second moment, so with zero biases ``Var(y) = n Var(w) Var(y_prev) / 2``:
    each layer multiplies the variance by ``n Var(w) / 2`` (and backward,
    the gradient's by ``n_out Var(w) / 2``). The deepest path from the input
    to ``fc`` crosses 22 such layers.

    * ``"he"`` (default): N(0, 2/n) weights, zero biases, so ``n Var(w) / 2 = 1``:
      the variance neither shrinks nor grows with depth. The classifiers
      (``fc``, ``aux*.fc2``) feed softmax, not a ReLU: N(0, 1/n). The paper
      gives no scheme (DistBelief); He et al. (2015) came a year later.
    * ``"xavier"``: the BVLC Caffe replication of GoogLeNet (its model readme:
      "xavier" instead of the original "gaussian"). Caffe's ``XavierFiller``
      with its default ``variance_norm: FAN_IN``: U(-a, a), a = sqrt(3/n), so
      ``Var(w) = a^2 / 3 = 1/n`` (LeCun's rule; Glorot and Bengio's averages
      fan-in and fan-out, see ``nn.init.xavier_uniform_``). Biases as in
      BVLC's ``train_val.prototxt``: 0.2 for every convolution (stem,
      Inception branches, aux conv) and for the aux heads' ``fc1``, 0 for
      the three classifiers. ``n Var(w) / 2 = 1/2``: with zero biases the
      variance would halve at every layer, 2^-22 (about 2e-7) after 22;
      the positive biases keep most ReLUs open and feed each layer a
      constant that does not shrink, which holds the signal up.
    * ``"gaussian"``: a fixed-std Gaussian, the kind the original 2014 training
      started from (BVLC's readme calls it "gaussian"), with AlexNet's std:
      N(0, 0.01^2) weights, zero biases.
      ``n Var(w) / 2 = n / 20000``: 0.03 for a 3x3 conv over 64 channels
      (n = 576), 0.01 for a 1x1 conv over 192, 0.001 for the cifar conv1
      (n = 27): the variance of the signal, and of the gradient, shrinks ten-
      to a thousandfold at every layer.

    The layers draw He weights as they are built; ``"xavier"`` and
    ``"gaussian"`` then redraw every conv and linear layer, so one seed gives
    each scheme its own weights (and, for every scheme, the same trunk with
    and without the aux heads). Batch norm, when on, starts as the identity.
    """

    def __init__(self, num_classes=1000, config="imagenet", aux=True, width=1.0,
                 batchnorm=False, dropout=0.4, aux_dropout=0.7, stem_stride=1, init="he"):
        super().__init__()
        _check_arguments(num_classes, config, width, stem_stride, init)
        self.config, self.num_classes, self.width = config, int(num_classes), float(width)
        self.input_size = INPUT_SIZES[config]
        self.stem_stride, self.init = stem_stride, init

        def c(*channels):
            scaled = [scale_channels(ch, width) for ch in channels]
            return scaled[0] if len(scaled) == 1 else scaled

        bn = batchnorm
        conv1_channels, conv2_reduce_channels, conv2_channels = c(*STEM_CHANNELS)
        if config == "imagenet":
            self.conv1 = ConvUnit(3, conv1_channels, 7, stride=2, padding=3, batchnorm=bn)
            self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            self.norm1 = None if bn else nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        else:
            self.conv1 = ConvUnit(3, conv1_channels, 3, stride=stem_stride, padding=1,
                                  batchnorm=bn)
        self.conv2_reduce = ConvUnit(conv1_channels, conv2_reduce_channels, 1, batchnorm=bn)
        self.conv2 = ConvUnit(conv2_reduce_channels, conv2_channels, 3, padding=1, batchnorm=bn)
        if config == "imagenet":
            self.norm2 = None if bn else nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
            self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

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
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.inception5b.out_channels, num_classes)
        self.fc.reset_parameters(nonlinearity="linear")    # feeds softmax, not a ReLU
        # The layers drew He weights as they were built; another scheme redraws them, the
        # trunk before the heads exist, so that aux=True and aux=False share a trunk.
        if init != "he":
            _redraw(self, init, classifiers=[self.fc])

        if aux:
            pooled = 2 if stem_stride == 2 else 4       # 14 or 16 pixels -> 4; 8 -> 2
            head = dict(conv_channels=c(AUX_CHANNELS.conv), fc_channels=c(AUX_CHANNELS.fc1),
                        pooled_size=pooled, dropout=aux_dropout, batchnorm=bn)
            self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes, **head)
            self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes, **head)
            if init != "he":
                for head in (self.aux1, self.aux2):
                    _redraw(head, init, classifiers=[head.fc2])
        else:
            self.aux1 = self.aux2 = None

    def forward(self, x):
        outputs = self._forward(x, with_aux=self.training)
        return outputs if self.training else outputs.logits

    def heads(self, x) -> GoogLeNetOutputs:
        """All three heads' logits, ``GoogLeNetOutputs(logits, aux1, aux2)``, in the current mode.

        In eval mode (dropout off, batch norm on its running statistics) this
        is how the aux heads are studied at inference: what do the features
        of inception4a and inception4d alone say? ``forward`` in eval mode
        keeps returning the main logits only. aux1 and aux2 are None for a
        model built with ``aux=False``.
        """
        return self._forward(x, with_aux=True)

    def _forward(self, x, with_aux):
        self._check_input(x)
        # Shapes for width 1: imagenet config, then cifar (stem_stride 1) after the bar.
        if self.config == "imagenet":
            x = self.conv1(x)                    # N x 64 x 112 x 112
            x = self.pool1(x)                    # N x 64 x 56 x 56
            if self.norm1 is not None:
                x = self.norm1(x)                # N x 64 x 56 x 56
            x = self.conv2_reduce(x)             # N x 64 x 56 x 56
            x = self.conv2(x)                    # N x 192 x 56 x 56
            if self.norm2 is not None:
                x = self.norm2(x)                # N x 192 x 56 x 56
            x = self.pool2(x)                    # N x 192 x 28 x 28
        else:
            x = self.conv1(x)                    #                       | N x 64 x 32 x 32
            x = self.conv2_reduce(x)             #                       | N x 64 x 32 x 32
            x = self.conv2(x)                    #                       | N x 192 x 32 x 32
        x = self.inception3a(x)                  # N x 256 x 28 x 28     | N x 256 x 32 x 32
        x = self.inception3b(x)                  # N x 480 x 28 x 28     | N x 480 x 32 x 32
        x = self.pool3(x)                        # N x 480 x 14 x 14     | N x 480 x 16 x 16
        x = self.inception4a(x)                  # N x 512 x 14 x 14     | N x 512 x 16 x 16
        aux1 = self._aux(self.aux1, x, with_aux) # N x num_classes (or None)
        x = self.inception4b(x)                  # N x 512 x 14 x 14     | N x 512 x 16 x 16
        x = self.inception4c(x)                  # N x 512 x 14 x 14     | N x 512 x 16 x 16
        x = self.inception4d(x)                  # N x 528 x 14 x 14     | N x 528 x 16 x 16
        aux2 = self._aux(self.aux2, x, with_aux) # N x num_classes (or None)
        x = self.inception4e(x)                  # N x 832 x 14 x 14     | N x 832 x 16 x 16
        x = self.pool4(x)                        # N x 832 x 7 x 7       | N x 832 x 8 x 8
        x = self.inception5a(x)                  # N x 832 x 7 x 7       | N x 832 x 8 x 8
        x = self.inception5b(x)                  # N x 1024 x 7 x 7      | N x 1024 x 8 x 8
        x = self.avgpool(x)                      # N x 1024 x 1 x 1
        x = x.flatten(1)                         # N x 1024
        x = self.dropout(x)                      # N x 1024
        logits = self.fc(x)                      # N x num_classes
        return GoogLeNetOutputs(logits, aux1, aux2)

    @staticmethod
    def _aux(head, x, with_aux):
        """Run an auxiliary head if asked and if the model has it."""
        return head(x) if with_aux and head is not None else None

    def _check_input(self, x):
        size = self.input_size
        if not isinstance(x, Tensor):
            raise TypeError(f"GoogLeNet: expected a Tensor input, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"GoogLeNet ({self.config} config): expected input of shape "
                             f"N x 3 x {size} x {size}, got {x.shape}")

    def extra_repr(self):
        text = f"config={self.config!r}, num_classes={self.num_classes}, width={self.width}"
        if self.stem_stride != 1:
            text += f", stem_stride={self.stem_stride}"
        if self.init != "he":
            text += f", init={self.init!r}"
        return text


def _redraw(root, scheme, classifiers):
    """Redraw every conv and linear layer under ``root`` by "xavier" or "gaussian"."""
    classifiers = {id(layer) for layer in classifiers}
    for module in root.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            _initialise_layer(module, scheme, feeds_relu=id(module) not in classifiers)


def _initialise_layer(layer, scheme, feeds_relu):
    """Redraw one conv or linear layer under "xavier" or "gaussian" (GoogLeNet's docstring)."""
    if scheme == "xavier":
        fan_in, _ = nn.init.calculate_fan_in_and_fan_out(layer.weight.shape)
        bound = math.sqrt(3.0 / fan_in)
        nn.init.uniform_(layer.weight, -bound, bound)
        bias = XAVIER_BIAS if feeds_relu else 0.0
    elif scheme == "gaussian":
        nn.init.normal_(layer.weight, 0.0, GAUSSIAN_STD)
        bias = 0.0
    else:
        raise ValueError(f"GoogLeNet: no redraw for init {scheme!r}")
    if layer.bias is not None:
        nn.init.constant_(layer.bias, bias)


def _check_arguments(num_classes, config, width, stem_stride, init):
    if config not in INPUT_SIZES:
        raise ValueError(f"GoogLeNet: unknown config {config!r}; expected one of "
                         f"{sorted(INPUT_SIZES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"GoogLeNet: num_classes must be an integer >= 1, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"GoogLeNet: width must be a number > 0, got {width!r}")
    if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
        raise ValueError(f"GoogLeNet: stem_stride must be 1 or 2, got {stem_stride!r}")
    if stem_stride != 1 and config != "cifar":
        raise ValueError(f"GoogLeNet: stem_stride={stem_stride} applies to the cifar config "
                         f"only (the imagenet stem is the paper's, conv1 already has stride 2)")
    if init not in INITS:
        raise ValueError(f"GoogLeNet: unknown init {init!r}; expected one of "
                         f"{', '.join(map(repr, INITS))}")


def googlenet_loss(outputs, targets, aux_weight=0.3, label_smoothing=0.0) -> GoogLeNetLoss:
    """The paper's training loss: main cross-entropy plus the discounted aux ones.

    ``total = CE(logits) + aux_weight * (CE(aux1) + CE(aux2))``. ``outputs``
    is a ``GoogLeNetOutputs`` (train mode) or a logits Tensor (eval mode);
    without aux logits ``total`` is the main loss. Every entry is a Tensor
    (the aux ones None when absent), so each head's share can be logged or
    back-propagated on its own.
    """
    if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or aux_weight < 0:
        raise ValueError(f"googlenet_loss: aux_weight must be a number >= 0, got {aux_weight!r}")
    if isinstance(outputs, Tensor):
        outputs = GoogLeNetOutputs(outputs, None, None)
    elif not isinstance(outputs, GoogLeNetOutputs):
        raise TypeError(f"googlenet_loss: outputs must be GoogLeNetOutputs or a logits Tensor, "
                        f"got {type(outputs).__name__}")
    main = F.cross_entropy(outputs.logits, targets, label_smoothing=label_smoothing)
    aux = [None if a is None else F.cross_entropy(a, targets, label_smoothing=label_smoothing)
           for a in (outputs.aux1, outputs.aux2)]
    present = [a for a in aux if a is not None]
    if not present:
        return GoogLeNetLoss(main, main, None, None)
    aux_sum = present[0] if len(present) == 1 else present[0] + present[1]
    return GoogLeNetLoss(main + aux_weight * aux_sum, main, aux[0], aux[1])
