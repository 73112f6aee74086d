"""Layers: each matches its functional op, owns the right parameters, and checks its arguments."""
import numpy as np
import pytest

import tinygnet
import tinygnet.functional as F
from tinygnet import nn


def as_tensor(rng, *shape, dtype=np.float64, requires_grad=False):
    return tinygnet.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=requires_grad)


def test_conv2d_parameters_forward_and_gradients(rng):
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1).to(dtype=np.float64)
    assert conv.weight.shape == (5, 3, 3, 3) and conv.bias.shape == (5,)   # OIHW
    conv.bias.data[...] = rng.standard_normal(5)
    x = as_tensor(rng, 2, 3, 7, 7, requires_grad=True)
    y = conv(x)
    assert y.shape == (2, 5, 4, 4)
    expected = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    np.testing.assert_array_equal(y.numpy(), expected.numpy())
    assert tinygnet.gradcheck(lambda x, w, b: conv(x), [x, conv.weight, conv.bias])
    no_bias = nn.Conv2d(3, 5, (1, 3), bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]
    assert repr(no_bias) == "Conv2d(3, 5, kernel_size=(1, 3), stride=(1, 1), bias=False)"


def test_linear_parameters_forward_and_gradients(rng):
    fc = nn.Linear(4, 3).to(dtype=np.float64)
    assert fc.weight.shape == (3, 4)                                      # (out, in)
    fc.bias.data[...] = rng.standard_normal(3)
    x = as_tensor(rng, 5, 4, requires_grad=True)
    np.testing.assert_allclose(fc(x).numpy(), x.numpy() @ fc.weight.numpy().T + fc.bias.numpy(),
                               rtol=1e-12)
    assert tinygnet.gradcheck(lambda x, w, b: fc(x), [x, fc.weight, fc.bias])


def test_batchnorm2d_train_updates_buffers_in_place_eval_uses_them(rng):
    bn = nn.BatchNorm2d(3, momentum=0.5).to(dtype=np.float64)
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    mean_buffer = bn.running_mean
    x = as_tensor(rng, 4, 3, 5, 5) * 2.0 + 1.0
    y = bn(x).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    assert bn.running_mean is mean_buffer
    batch_mean = x.numpy().mean(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.5 * batch_mean, rtol=1e-12)
    bn.eval()
    before = bn.state_dict()
    y_eval = bn(x).numpy()
    after = bn.state_dict()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    expected = (x.numpy() - before["running_mean"][:, None, None]) / np.sqrt(
        before["running_var"][:, None, None] + bn.eps)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-10)


def test_batchnorm2d_gradients_in_train_mode(rng):
    bn = nn.BatchNorm2d(2).to(dtype=np.float64)
    bn.weight.data[...] = rng.standard_normal(2)
    x = as_tensor(rng, 3, 2, 2, 2, requires_grad=True)
    assert tinygnet.gradcheck(lambda x, w, b: bn(x), [x, bn.weight, bn.bias])
    with pytest.raises(ValueError, match="BatchNorm2d: expected a 4-D input"):
        bn(as_tensor(rng, 3, 2))


def test_dropout_is_identity_in_eval_and_drops_in_train(rng):
    drop = nn.Dropout(0.5)
    x = tinygnet.tensor(np.ones((100, 100), dtype=np.float32))
    tinygnet.manual_seed(0)
    y = drop(x).numpy()
    assert 0.45 < (y == 0).mean() < 0.55 and set(np.unique(y)) == {0.0, 2.0}
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    with pytest.raises(ValueError, match="Dropout: p must be a probability"):
        nn.Dropout(1.5)


def test_pools_norm_relu_flatten_match_their_ops(rng):
    x = as_tensor(rng, 2, 6, 10, 10)   # (10 - 3) / 2 = 3.5: ceil_mode gives 5, not 4
    cases = [
        (nn.MaxPool2d(3, stride=2, ceil_mode=True), F.max_pool2d(x, 3, 2, 0, True), (2, 6, 5, 5)),
        (nn.AvgPool2d(5, stride=3), F.avg_pool2d(x, 5, 3), (2, 6, 2, 2)),
        (nn.AdaptiveAvgPool2d(1), F.adaptive_avg_pool2d(x, 1), (2, 6, 1, 1)),
        (nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
         F.local_response_norm(x, 5, 1e-4, 0.75, 1.0), (2, 6, 10, 10)),
        (nn.ReLU(), F.relu(x), (2, 6, 10, 10)),
        (nn.Flatten(), x.reshape(2, -1), (2, 600)),
    ]
    for layer, expected, shape in cases:
        y = layer(x)
        assert y.shape == shape, layer
        np.testing.assert_array_equal(y.numpy(), expected.numpy(), err_msg=repr(layer))
        assert list(layer.parameters()) == [] and layer.state_dict() == {}


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(0, 4, 3), "Conv2d: in_channels must be a positive integer"),
    (lambda: nn.Conv2d(3, 4, 0), "Conv2d: kernel_size must be >= 1"),
    (lambda: nn.Linear(3, -1), "Linear: out_features must be a positive integer"),
    (lambda: nn.BatchNorm2d(2.5), "BatchNorm2d: num_features must be a positive integer"),
    (lambda: nn.LocalResponseNorm(0), "LocalResponseNorm: size must be a positive integer"),
])
def test_bad_layer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_layers_are_float32_by_default_and_cast_with_to():
    conv = nn.Conv2d(2, 3, 3)
    assert conv.weight.dtype == np.float32 and conv.weight.device == "cpu"
    x = tinygnet.tensor(np.ones((1, 2, 4, 4), dtype=np.float32))
    assert conv(x).dtype == np.float32
    assert conv.to(dtype=np.float64)(x.to(dtype=np.float64)).dtype == np.float64
