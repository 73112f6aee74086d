"""Every op on the GPU: against the CPU in float32, and gradcheck in float64 there.

One table (``OPS``) lists each op of ``tinygnet.functional`` with inputs
that exercise its GPU path (the CUDA kernels where it has them). For each:

* ``test_gpu_matches_cpu``: the same float32 inputs on both devices give the
  same output and the same input gradients (for a random upstream gradient),
  within float32 tolerances;
* ``test_gradcheck_on_device``: backprop against finite differences in
  float64, on each device.

Then one GoogLeNet training step (forward, combined loss, backward, SGD) on
both devices from the same weights and batch, and the device errors.
The cuda cases skip where there is no GPU (see the fixtures in conftest.py).
"""
import numpy as np
import pytest

import tinygnet as tg
import tinygnet.functional as F
from tinygnet import backend, gradcheck
from tinygnet.models import GoogLeNet, googlenet_loss
from tinygnet.optim import SGD


def shuffled(rng, *shape):
    """Distinct, well-spaced values (no ties for max, none near ReLU's kink)."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2 + 0.5).reshape(shape) / size * 4


# name: (function of Tensors, builder of the float64 input arrays from rng)
OPS = {
    "conv2d_3x3_pad1": (lambda x, w, b: F.conv2d(x, w, b, padding=1),
                        lambda r: [r.standard_normal((2, 3, 7, 6)), r.standard_normal((4, 3, 3, 3)),
                                   r.standard_normal(4)]),
    "conv2d_5x5_pad2": (lambda x, w, b: F.conv2d(x, w, b, padding=2),
                        lambda r: [r.standard_normal((2, 2, 6, 6)), r.standard_normal((3, 2, 5, 5)),
                                   r.standard_normal(3)]),
    "conv2d_7x7_stride2_pad3": (lambda x, w: F.conv2d(x, w, stride=2, padding=3),
                                lambda r: [r.standard_normal((1, 3, 11, 9)),
                                           r.standard_normal((2, 3, 7, 7))]),
    "conv2d_1x1": (lambda x, w, b: F.conv2d(x, w, b),
                   lambda r: [r.standard_normal((2, 5, 4, 3)), r.standard_normal((3, 5, 1, 1)),
                              r.standard_normal(3)]),
    "max_pool2d_3x3_s1_p1": (lambda x: F.max_pool2d(x, 3, stride=1, padding=1),
                             lambda r: [shuffled(r, 2, 3, 6, 5)]),
    "max_pool2d_3x3_s2_ceil": (lambda x: F.max_pool2d(x, 3, stride=2, ceil_mode=True),
                               lambda r: [shuffled(r, 2, 2, 8, 7)]),
    "avg_pool2d_5_s3": (lambda x: F.avg_pool2d(x, 5, stride=3),
                        lambda r: [r.standard_normal((2, 3, 14, 14))]),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, 1),
                            lambda r: [r.standard_normal((2, 3, 4, 5))]),
    "local_response_norm": (lambda x: F.local_response_norm(x, 5, alpha=0.5, beta=0.75, k=2.0),
                            lambda r: [r.standard_normal((2, 7, 3, 4))]),
    "batch_norm_train": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                         lambda r: [r.standard_normal((4, 3, 2, 3)), r.uniform(0.5, 1.5, 3),
                                    r.standard_normal(3)]),
    "relu": (F.relu, lambda r: [shuffled(r, 3, 4, 5)]),
    "softmax": (lambda x: F.softmax(x, dim=1), lambda r: [r.standard_normal((3, 5))]),
    "log_softmax": (lambda x: F.log_softmax(x, dim=1), lambda r: [r.standard_normal((3, 5))]),
    "cross_entropy_mean": (lambda x: F.cross_entropy(x, np.array([0, 4, 2, 2])),
                           lambda r: [r.standard_normal((4, 5)) * 3]),
    "cross_entropy_none_smoothed": (
        lambda x: F.cross_entropy(x, np.array([1, 0, 3]), reduction="none", label_smoothing=0.1),
        lambda r: [r.standard_normal((3, 4))]),
    "nll_loss": (lambda x: F.nll_loss(F.log_softmax(x, dim=1), np.array([2, 0])),
                 lambda r: [r.standard_normal((2, 3))]),
    "linear": (F.linear, lambda r: [r.standard_normal((3, 4)), r.standard_normal((2, 4)),
                                    r.standard_normal(2)]),
    "cat_and_flatten": (lambda a, b: F.flatten(F.cat([a, b], dim=1)),
                        lambda r: [r.standard_normal((2, 1, 3)), r.standard_normal((2, 2, 3))]),
}


def _inputs(name, dtype, device, seed=0):
    arrays = OPS[name][1](np.random.default_rng(seed))
    return [tg.tensor(a, dtype=dtype, device=device, requires_grad=True) for a in arrays]


def _forward_backward(name, dtype, device):
    """Output and input gradients (as NumPy) for a fixed random upstream gradient."""
    inputs = _inputs(name, dtype, device)
    y = OPS[name][0](*inputs)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(tg.tensor(gy, dtype=dtype, device=device))
    return y.numpy(), [t.grad.numpy() for t in inputs]


@pytest.mark.parametrize("name", OPS)
def test_gpu_matches_cpu(name, cuda):
    y_cpu, grads_cpu = _forward_backward(name, np.float32, "cpu")
    y_gpu, grads_gpu = _forward_backward(name, np.float32, cuda)
    assert y_gpu.dtype == np.float32
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=1e-4, atol=1e-5)
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu):
        assert g_gpu.dtype == np.float32
        np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", OPS)
def test_gradcheck_on_device(name, device):
    inputs = _inputs(name, np.float64, device)
    assert all(t.device == backend.parse_device(device) for t in inputs)
    gradcheck(OPS[name][0], inputs)


def test_dropout_on_device_is_seeded_and_its_gradient_is_the_mask(device):
    x = tg.tensor(np.ones((64, 64)), requires_grad=True, device=device)
    tg.manual_seed(3)
    y1 = F.dropout(x, 0.5)
    tg.manual_seed(3)
    y2 = F.dropout(x, 0.5)
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert set(np.unique(y1.numpy())) <= {0.0, 2.0} and 0.4 < (y1.numpy() == 0).mean() < 0.6
    y1.backward(tg.tensor(np.ones((64, 64)), device=device))
    np.testing.assert_array_equal(x.grad.numpy(), y1.numpy())


def test_rng_state_round_trip_on_device(device):
    """get/set_rng_state restores the stream of the device too (exact --resume with dropout)."""
    x = tg.tensor(np.ones((8, 8)), device=device)
    tg.manual_seed(5)
    F.dropout(x, 0.5)                       # the device stream exists and has advanced
    state = backend.get_rng_state()
    expected = F.dropout(x, 0.5).numpy()
    F.dropout(x, 0.5)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), expected)


def test_googlenet_training_step_gpu_matches_cpu(cuda):
    """The same weights and batch: one SGD step gives the same losses, gradients and weights."""
    tg.manual_seed(0)
    cpu_model = GoogLeNet(num_classes=10, config="cifar", width=0.25, dropout=0.0,
                          aux_dropout=0.0).train()
    gpu_model = GoogLeNet(num_classes=10, config="cifar", width=0.25, dropout=0.0,
                          aux_dropout=0.0).train()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.to(cuda)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, size=8)

    def step(model, device):
        optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = googlenet_loss(model(tg.tensor(images, device=device)),
                              backend.to_device(labels, device))
        loss.total.backward()
        grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
        optimizer.step()
        return float(loss.total.item()), grads, {k: backend.to_numpy(v) for k, v in
                                                  model.state_dict().items()}

    loss_cpu, grads_cpu, weights_cpu = step(cpu_model, "cpu")
    loss_gpu, grads_gpu, weights_gpu = step(gpu_model, cuda)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    for name in grads_cpu:
        scale = np.abs(grads_cpu[name]).max() + 1e-12
        np.testing.assert_allclose(grads_gpu[name], grads_cpu[name], rtol=2e-3,
                                   atol=2e-4 * scale, err_msg=name)
    for name in weights_cpu:
        np.testing.assert_allclose(weights_gpu[name], weights_cpu[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_mixing_devices_in_one_op_names_both(cuda):
    a = tg.tensor(np.ones(3), device="cpu")
    b = tg.tensor(np.ones(3), device=cuda)
    with pytest.raises(RuntimeError, match=r"Add: .*different devices \(cpu, cuda:0\)"):
        a + b


def test_mixing_devices_is_a_clear_error_without_a_gpu(monkeypatch):
    """The same check on a CPU-only machine: one tensor pretends to live on cuda:0."""
    a, b = tg.tensor(np.ones(3)), tg.tensor(np.ones(3))
    real_device_of = backend.device_of
    monkeypatch.setattr(backend, "device_of",
                        lambda array: "cuda:0" if array is b.data else real_device_of(array))
    with pytest.raises(RuntimeError, match=r"Mul: .*different devices \(cpu, cuda:0\).*\.to\("):
        a * b
