"""GoogLeNet's three initialisations: each layer type's weight distribution and biases.

Layer types: convolutions (all feed a ReLU), the aux heads' hidden ``fc1``
(feeds a ReLU) and the three classifiers (``fc``, ``aux1.fc2``,
``aux2.fc2``: feed softmax). Per layer, the sample standard deviation of
its weights must match the scheme's to within 5 standard errors
(``1/sqrt(2 N)`` relative for N draws: loose enough never to fail by
chance, tight enough to catch a wrong fan or a factor of 2 in the variance).
"""
import math

import numpy as np
import pytest

import tinygnet
from tinygnet import nn
from tinygnet.models import GoogLeNet
from tinygnet.nn.init import calculate_fan_in_and_fan_out

CLASSIFIERS = ("fc", "aux1.fc2", "aux2.fc2")


def build(init, **kwargs):
    tinygnet.manual_seed(0)
    options = dict(num_classes=10, config="cifar", width=0.25, stem_stride=2, init=init)
    options.update(kwargs)
    return GoogLeNet(**options)


def layers(model):
    """(name, layer, kind) for every conv and linear layer; kind: conv, hidden or classifier."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            yield name, module, "conv"
        elif isinstance(module, nn.Linear):
            yield name, module, "classifier" if name in CLASSIFIERS else "hidden"


def expected(init, kind, fan_in):
    """(weight std, bias) of a layer of ``kind`` under ``init``."""
    if init == "he":
        return math.sqrt((1.0 if kind == "classifier" else 2.0) / fan_in), 0.0
    if init == "xavier":      # U(-a, a), a = sqrt(3 / fan_in): variance a^2 / 3 = 1 / fan_in
        return math.sqrt(1.0 / fan_in), 0.0 if kind == "classifier" else 0.2
    return 0.01, 0.0


@pytest.mark.parametrize("init", ["he", "xavier", "gaussian"])
def test_each_layer_type_has_the_documented_variance_and_biases(init):
    model = build(init)
    kinds = set()
    for name, layer, kind in layers(model):
        kinds.add(kind)
        w = layer.weight.numpy().astype(np.float64)
        fan_in, _ = calculate_fan_in_and_fan_out(w.shape)
        std, bias = expected(init, kind, fan_in)
        tolerance = 5 / math.sqrt(2 * w.size)
        assert abs(w.std() / std - 1) < tolerance, (name, w.std(), std)
        assert abs(w.mean()) < 5 * std / math.sqrt(w.size), name
        np.testing.assert_array_equal(layer.bias.numpy(), np.float32(bias), err_msg=name)
    assert kinds == {"conv", "hidden", "classifier"}


def test_xavier_is_uniform_within_caffe_bound():
    """Caffe's xavier filler: U(-sqrt(3/fan_in), +sqrt(3/fan_in)), every layer."""
    for name, layer, _ in layers(build("xavier")):
        w = layer.weight.numpy()
        bound = math.sqrt(3.0 / calculate_fan_in_and_fan_out(w.shape)[0])
        assert np.abs(w).max() <= bound * (1 + 1e-6), name
        if w.size >= 5000:      # a normal of the same variance passes the bound 8% of the time
            assert np.abs(w).max() > 0.999 * bound, name
            # A quarter of the draws in each quarter of [-a, a]: uniform, not bell-shaped.
            counts = np.histogram(w, bins=4, range=(-bound, bound))[0] / w.size
            np.testing.assert_allclose(counts, 0.25, atol=0.03, err_msg=name)


def test_gaussian_is_normal_with_std_001():
    w = build("gaussian").inception4e.branch2.weight.numpy()       # 40 x 40 x 3 x 3
    assert abs(w.std() / 0.01 - 1) < 0.05
    assert 0.02 < (np.abs(w) > 0.02).mean() < 0.07        # 4.6% beyond 2 std for a normal


@pytest.mark.parametrize("init", ["xavier", "gaussian"])
def test_with_batch_norm_the_convs_have_no_bias_and_bn_starts_as_identity(init):
    model = build(init, batchnorm=True)
    assert model.conv1.bias is None and model.inception3a.branch2.bias is None
    np.testing.assert_array_equal(model.conv2.bn.weight.numpy(), 1.0)
    np.testing.assert_array_equal(model.conv2.bn.bias.numpy(), 0.0)
    if init == "xavier":
        np.testing.assert_array_equal(model.aux1.fc1.bias.numpy(), np.float32(0.2))


def test_default_is_he_and_the_scheme_shows_in_the_repr():
    assert build("he").state_dict().keys() == build("xavier").state_dict().keys()
    tinygnet.manual_seed(0)
    default = GoogLeNet(10, config="cifar", width=0.25, stem_stride=2)
    for name, value in build("he").state_dict().items():
        np.testing.assert_array_equal(value, default.state_dict()[name], err_msg=name)
    assert "init" not in default.extra_repr()
    assert "init='gaussian'" in build("gaussian").extra_repr()


@pytest.mark.parametrize("init", ["Xavier", "kaiming", None, 1])
def test_unknown_init_is_refused(init):
    with pytest.raises(ValueError, match="unknown init"):
        GoogLeNet(10, config="cifar", width=0.0625, init=init)


@pytest.mark.parametrize("init", ["he", "xavier", "gaussian"])
def test_one_seed_gives_the_same_trunk_with_and_without_aux_heads(init):
    with_aux, without = build(init), build(init, aux=False)
    trunk = without.state_dict()
    assert set(trunk) < set(with_aux.state_dict())
    for name, value in trunk.items():
        np.testing.assert_array_equal(with_aux.state_dict()[name], value, err_msg=name)
